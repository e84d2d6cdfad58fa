package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/config"
)

// FuzzParse feeds arbitrary bytes to Parse, seeded with every file in
// testdata (valid sidecar and edge configs and broken ones). Parse must
// never panic; a config it returns must validate again (the reload path
// re-validates) and summarise; an error must be a config.Errors whose every
// element says something.
func FuzzParse(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds in testdata: %v", err)
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse(data, "fuzz.yaml")
		if err == nil {
			if cfg == nil {
				t.Fatal("Parse returned neither a config nor an error")
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate after a successful Parse: %v", err)
			}
			if cfg.Summary() == "" {
				t.Fatal("empty Summary")
			}
			return
		}
		if cfg != nil {
			t.Fatalf("Parse returned a config along with %v", err)
		}
		es, ok := err.(config.Errors)
		if !ok {
			t.Fatalf("error %T is not a config.Errors: %v", err, err)
		}
		var as config.Errors
		if !errors.As(err, &as) || len(es) == 0 {
			t.Fatalf("errors.As failed or empty Errors: %v", err)
		}
		for i, e := range es {
			if e == nil {
				t.Fatalf("Errors[%d] is nil", i)
			}
			if e.Msg == "" || e.File != "fuzz.yaml" || e.Line < 0 {
				t.Fatalf("Errors[%d] = %#v", i, *e)
			}
		}
	})
}
