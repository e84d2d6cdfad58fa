package main

import (
	"fmt"
	"io"

	"github.com/meshd/meshd/config"
)

func cmdValidate(args []string, stdout io.Writer) error {
	fs := newFlags("validate", stdout)
	file := fs.String("config", "", "config file to check")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *file == "" {
		return fmt.Errorf("meshd validate: -config is required: %w", errUsage)
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return err
	}
	if err := cfg.CheckFiles(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok: %s\n", *file, cfg.Summary())
	return nil
}
