package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/meshd/meshd/config"
)

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// runCmd runs the meshd command line in-process and returns its exit code
// and output.
func runCmd(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// running is an in-process meshd built by newServer, as `meshd run` builds
// it.
type running struct {
	admin, listen string
	once          sync.Once
	cancel        context.CancelFunc
	done          chan error
	tel           *telemetry
}

// startServer runs meshd on file until stop or the end of the test.
func startServer(t *testing.T, file string) *running {
	t.Helper()
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, tel, err := newServer(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), tel: tel}
	go func() { r.done <- srv.Run(ctx) }()
	select {
	case <-srv.Serving():
	case err := <-r.done:
		cancel()
		_ = tel.close()
		t.Fatalf("meshd did not start: %v", err)
	}
	r.admin = srv.AdminAddr()
	for _, a := range srv.ListenerAddrs() {
		r.listen = a
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop drains meshd, waits for it and closes its telemetry, as cmdRun does
// after SIGTERM. It is idempotent.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := r.tel.close(); err != nil {
			t.Errorf("telemetry close: %v", err)
		}
	})
}
