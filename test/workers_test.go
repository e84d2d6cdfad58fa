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
	write("3")
	p := startBinary(t, buildMeshd(t), file, "-watch-interval", "0")
	workers := func() float64 { return scrapeMetrics(t, p.admin).Value(t, "meshd_workers", nil) }
	if got := workers(); got != 3 {
		t.Fatalf("workers: 3 gave meshd_workers %v", got)
	}
	for _, step := range []struct {
		workers string
		want    float64
	}{
		{"auto", 1}, // idle: one worker
		{"2", 2},
	} {
		write(step.workers)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 10*time.Second, "workers: "+step.workers+" to apply", func() bool { return workers() == step.want })
	}
}
