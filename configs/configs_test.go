package configs

import (
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

func TestExamplesValidate(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found only %d example configs", len(files))
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := router.New(cfg.Routes); err != nil {
				t.Fatal(err)
			}
		})
	}
}
