package metrics_test

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/metrics"
)

func TestFaultInjectedCounted(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	for _, f := range []string{"abort", "abort", "delay", ""} {
		m.CallStarted()
		m.ObserveCall(&callrecord.Call{Method: "/a.S/M", Route: "r", Cluster: "c", Code: codes.Unavailable, Fault: f})
	}
	mfs := scrape(t, m)
	for kind, want := range map[string]float64{"abort": 2, "delay": 1} {
		if got := mfs.Value(t, "meshd_fault_injected_total", map[string]string{"route": "r", "kind": kind}); got != want {
			t.Errorf("meshd_fault_injected_total{kind=%s} = %v, want %v", kind, got, want)
		}
	}
}

func TestMirrorCounted(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	for _, r := range []string{"answered", "answered", "dropped"} {
		m.ObserveMirror("users", r)
	}
	mfs := scrape(t, m)
	for result, want := range map[string]float64{"answered": 2, "dropped": 1} {
		if got := mfs.Value(t, "meshd_mirror_requests_total", map[string]string{"route": "users", "result": result}); got != want {
			t.Errorf("meshd_mirror_requests_total{result=%s} = %v, want %v", result, got, want)
		}
	}
}
