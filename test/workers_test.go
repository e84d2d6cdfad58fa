package test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testkit"
)

// TestWorkers: the workers key sets the meshd binary's thread count
// (meshd_workers is GOMAXPROCS), a reload changes it, and auto gives an
// idle meshd one worker. Auto's growth under saturation is the decider's
// table test (workers/): it needs an idle CPU this shared machine cannot
// promise.
func TestWorkers(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "wk", 1)
	file := filepath.Join(t.TempDir(), "meshd.yaml")
	write := func(workers string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(simpleConfig(bs, "")+"workers: "+workers+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("2")
	p := startBinary(t, buildMeshd(t), file, "-watch-interval", "0")
	workers := func() float64 { return scrapeMetrics(t, p.admin).Value(t, "meshd_workers", nil) }
	if got := workers(); got != 2 {
		t.Fatalf("workers: 2 gave meshd_workers %v", got)
	}
	for _, step := range []struct {
		workers string
		want    float64
		within  time.Duration
	}{
		// Idle: auto gives the second worker back after five quiet
		// seconds (workers/workers.go), one worker at a time.
		{"auto", 1, 20 * time.Second},
		{"3", 3, 10 * time.Second},
	} {
		write(step.workers)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, step.within, "workers: "+step.workers+" to apply", func() bool { return workers() == step.want })
	}
}
