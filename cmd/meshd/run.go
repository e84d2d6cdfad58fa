package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/workers"
)

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	file := fs.String("config", "", "config file")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", logFormatJSON, "json (one object per line) or text (key=value)")
	watch := fs.Duration("watch-interval", time.Second, "how often to poll the config file for changes, besides watching its directory (0: no polling)")
	reusePort := fs.Bool("reuse-port", true, "bind listeners and the admin port with SO_REUSEPORT (Linux), so a new meshd can start before this one is stopped; false binds exclusively")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *file == "" {
		return fmt.Errorf("meshd run: -config is required: %w", errUsage)
	}
	lvl, err := parseLevel(*level)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, *format, lvl)
	if err != nil {
		// Usage errors exit 2 without a message of their own; say which.
		fmt.Fprintln(stderr, err)
		return err
	}

	cfg, err := config.Load(*file)
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	ctx, stop := signalContext()
	defer stop()

	srv, tel, err := newServer(ctx, cfg, log, server.WithReusePort(*reusePort),
		server.WithWorkers(workers.New(workers.WithLogger(log))))
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	reloadCtx, stopReload := context.WithCancel(ctx)
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		reloadLoop(reloadCtx, *file, *watch, srv, log)
	}()
	err = srv.Run(ctx)
	stopReload()
	<-reloadDone
	// Every call has ended: flush what they left for the collector and
	// the access log.
	if cerr := tel.close(); cerr != nil {
		log.Warn("telemetry not fully flushed", "err", cerr)
	}
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	log.Info("meshd stopped")
	return nil
}
