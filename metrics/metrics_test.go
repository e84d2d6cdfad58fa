package metrics_test

import (
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/metrics"
)

// scrape fetches /metrics from a real HTTP server in front of m, asking for
// the text format, and parses it with Prometheus' own text parser.
func scrape(t *testing.T, m *metrics.Metrics) testkit.Metrics {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	return testkit.Scrape(t, srv.Client(), srv.URL)
}

// observe runs one call through m the way the proxy does.
func observe(m *metrics.Metrics, c callrecord.Call) {
	m.CallStarted()
	m.ObserveCall(&c)
}

func TestCallCountsAndLatency(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	const method = "/users.v1.Users/GetUser"
	for i := range 7 {
		observe(m, callrecord.Call{Method: method, Route: "users", Cluster: "users-a", Code: codes.OK,
			Duration: time.Duration(i+1) * time.Millisecond, Attempts: 1, BytesIn: 10, BytesOut: 100})
	}
	for range 3 {
		observe(m, callrecord.Call{Method: method, Route: "users", Cluster: "users-a", Code: codes.Unavailable,
			Duration: 2 * time.Second, Attempts: 3})
	}
	observe(m, callrecord.Call{Method: method, Route: "users", Cluster: "users-b", Code: codes.OK, Duration: time.Millisecond, Attempts: 1})

	mfs := scrape(t, m)
	base := map[string]string{"grpc_service": "users.v1.Users", "grpc_method": "GetUser", "route": "users", "cluster": "users-a"}
	with := func(k, v string) map[string]string {
		out := map[string]string{k: v}
		for bk, bv := range base {
			out[bk] = bv
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"grpc_server_handled_total", with("grpc_code", "OK"), 7},
		{"grpc_server_handled_total", with("grpc_code", "Unavailable"), 3},
		{"grpc_server_handled_total", map[string]string{"cluster": "users-b", "grpc_code": "OK"}, 1},
		{"meshd_upstream_attempts_total", map[string]string{"route": "users", "cluster": "users-a"}, 7 + 9},
		{"meshd_upstream_retries_total", map[string]string{"route": "users", "cluster": "users-a"}, 6},
		{"meshd_message_bytes_total", map[string]string{"cluster": "users-a", "direction": "in"}, 70},
		{"meshd_message_bytes_total", map[string]string{"cluster": "users-a", "direction": "out"}, 700},
		{"meshd_active_streams", nil, 0},
	} {
		if got := mfs.Value(t, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// Only codes that happened have series.
	if got := len(mfs.Series("grpc_server_handled_total", base)); got != 2 {
		t.Errorf("handled series for users-a: %d, want 2 (OK, Unavailable)", got)
	}

	hs := mfs.Series("grpc_server_handling_seconds", base)
	if len(hs) != 1 {
		t.Fatalf("handling_seconds series: %d, want 1", len(hs))
	}
	h := hs[0].GetHistogram()
	if h.GetSampleCount() != 10 {
		t.Errorf("histogram count %d, want 10", h.GetSampleCount())
	}
	wantSum := (1+2+3+4+5+6+7)*0.001 + 3*2.0
	if d := h.GetSampleSum() - wantSum; d > 1e-9 || d < -1e-9 {
		t.Errorf("histogram sum %v, want %v", h.GetSampleSum(), wantSum)
	}
	for _, b := range h.GetBucket() {
		var want uint64
		switch ub := b.GetUpperBound(); {
		case ub >= 2.5:
			want = 10
		case ub >= 0.01:
			want = 7
		case ub >= 0.005:
			want = 5
		case ub >= 0.0025:
			want = 2
		case ub >= 0.001:
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

func TestMethodLabelsBounded(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.WithMaxMethods(2))
	// Three routed methods with a cap of two: the third is "other".
	for i, method := range []string{"/a.S/One", "/a.S/Two", "/a.S/Three", "/a.S/One", "/a.S/Four"} {
		observe(m, callrecord.Call{Method: method, Route: "r", Cluster: "c", Code: codes.OK, Attempts: 1, Duration: time.Duration(i) * time.Millisecond})
	}
	// A known method on another route keeps its name.
	observe(m, callrecord.Call{Method: "/a.S/One", Route: "r2", Cluster: "c", Code: codes.OK, Attempts: 1})
	// Calls that matched no route never get their own labels, however
	// many distinct names clients invent.
	for i := range 50 {
		observe(m, callrecord.Call{Method: fmt.Sprintf("/evil.S/M%d", i), Code: codes.Unimplemented})
	}
	// Not valid UTF-8: must neither panic nor break the exposition.
	observe(m, callrecord.Call{Method: "/x.S/\xff\xfe", Code: codes.Unimplemented})

	mfs := scrape(t, m)
	if got, want := mfs.LabelValues("grpc_server_handled_total", "grpc_method"), []string{"One", "Two", "other", "unmatched"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("grpc_method values %v, want %v", got, want)
	}
	if got, want := mfs.LabelValues("grpc_server_handling_seconds", "grpc_method"), []string{"One", "Two", "other", "unmatched"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("histogram grpc_method values %v, want %v", got, want)
	}
	for _, tc := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"grpc_method": "One", "route": "r"}, 2},
		{map[string]string{"grpc_method": "One", "route": "r2"}, 1},
		{map[string]string{"grpc_method": "other", "grpc_service": "other", "route": "r"}, 2},
		{map[string]string{"grpc_method": "unmatched", "grpc_service": "unmatched", "grpc_code": "Unimplemented"}, 51},
	} {
		if got := mfs.Value(t, "grpc_server_handled_total", tc.labels); got != tc.want {
			t.Errorf("handled%v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	// Unmatched calls never went upstream: no route-level series for them.
	if got := mfs.LabelValues("meshd_upstream_attempts_total", "route"); fmt.Sprint(got) != "[r r2]" {
		t.Errorf("attempts routes %v, want [r r2]", got)
	}
}

// TestConcurrentCalls hammers the cap from many goroutines: the totals must
// be exact and the race detector quiet.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.WithMaxMethods(3))
	const workers, perWorker = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				observe(m, callrecord.Call{Method: fmt.Sprintf("/p.S/M%d", (w+i)%10), Route: "r", Cluster: "c", Code: codes.OK, Attempts: 1})
			}
		}()
	}
	wg.Wait()
	mfs := scrape(t, m)
	var total float64
	for _, s := range mfs.Series("grpc_server_handled_total", map[string]string{"route": "r"}) {
		total += s.GetCounter().GetValue()
	}
	if total != workers*perWorker {
		t.Errorf("handled total %v, want %d", total, workers*perWorker)
	}
	if got := len(mfs.LabelValues("grpc_server_handled_total", "grpc_method")); got != 4 {
		t.Errorf("%d method label values, want 3 + other", got)
	}
	if got := mfs.Value(t, "meshd_upstream_attempts_total", nil); got != workers*perWorker {
		t.Errorf("attempts %v, want %d", got, workers*perWorker)
	}
}

func TestActiveStreams(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	for range 3 {
		m.CallStarted()
	}
	m.ObserveCall(&callrecord.Call{Method: "/a.S/M", Route: "r", Cluster: "c"})
	if got := scrape(t, m).Value(t, "meshd_active_streams", nil); got != 2 {
		t.Errorf("active streams %v, want 2", got)
	}
}

// source is a fixed snapshot of meshd's state, standing in for the server
// the way a table of inputs stands in for traffic.
type source struct {
	clusters  []balancer.ClusterStatus
	discovery map[string]discovery.WatchStatus
	ok, fail  uint64
}

func (s source) ClusterStatuses() []balancer.ClusterStatus           { return s.clusters }
func (s source) DiscoveryStatuses() map[string]discovery.WatchStatus { return s.discovery }
func (s source) ReloadCounts() (uint64, uint64)                      { return s.ok, s.fail }

func TestStateMetrics(t *testing.T) {
	t.Parallel()
	var dropped uint64 = 42
	m := metrics.New(metrics.WithDroppedSpans(func() uint64 { return dropped }), metrics.WithDroppedLogLines(func() uint64 { return 7 }))

	// Before SetSource there is no state to describe.
	mfs := scrape(t, m)
	if _, ok := mfs["meshd_endpoint_state"]; ok {
		t.Error("endpoint state reported before SetSource")
	}
	if got := mfs.Value(t, "meshd_tracing_dropped_spans_total", nil); got != 42 {
		t.Errorf("dropped spans %v, want 42", got)
	}
	if got := mfs.Value(t, "meshd_access_log_dropped_total", nil); got != 7 {
		t.Errorf("dropped log lines %v, want 7", got)
	}
	for _, fam := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := mfs[fam]; !ok {
			t.Errorf("%s missing: runtime and process collectors not registered", fam)
		}
	}

	last := time.Unix(1700000000, 0)
	m.SetSource(source{
		clusters: []balancer.ClusterStatus{{
			Name: "users", Ready: true, Healthy: 1, Total: 2,
			HealthyPanicThreshold: 60, Panic: true, PanicEntered: 2, PanicPicks: 9,
			Endpoints: []balancer.EndpointStatus{
				{Address: "127.0.0.1:1", State: balancer.StateServing, Weight: 3, Outstanding: 4},
				{Address: "127.0.0.1:2", State: balancer.StateEjected, Weight: 1, Ejections: 2},
				// Same address draining next to its replacement: reported once.
				{Address: "127.0.0.1:1", State: balancer.StateDraining},
			},
		}},
		discovery: map[string]discovery.WatchStatus{"users": {Healthy: false, Failures: 3, LastSuccess: last}},
		ok:        5, fail: 2,
	})
	mfs = scrape(t, m)
	ep1 := map[string]string{"cluster": "users", "endpoint": "127.0.0.1:1"}
	ep2 := map[string]string{"cluster": "users", "endpoint": "127.0.0.1:2"}
	withState := func(base map[string]string, st string) map[string]string {
		return map[string]string{"cluster": base["cluster"], "endpoint": base["endpoint"], "state": st}
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshd_endpoint_state", withState(ep1, "serving"), 1},
		{"meshd_endpoint_state", withState(ep1, "draining"), 0},
		{"meshd_endpoint_state", withState(ep2, "ejected"), 1},
		{"meshd_endpoint_state", withState(ep2, "serving"), 0},
		{"meshd_endpoint_outstanding_requests", ep1, 4},
		{"meshd_endpoint_weight", ep1, 3},
		{"meshd_endpoint_ejections_total", ep2, 2},
		{"meshd_cluster_endpoints", map[string]string{"cluster": "users"}, 2},
		{"meshd_cluster_healthy_endpoints", map[string]string{"cluster": "users"}, 1},
		{"meshd_cluster_ready", map[string]string{"cluster": "users"}, 1},
		{"meshd_cluster_panic", map[string]string{"cluster": "users"}, 1},
		{"meshd_cluster_panics_total", map[string]string{"cluster": "users"}, 2},
		{"meshd_cluster_panic_picks_total", map[string]string{"cluster": "users"}, 9},
		{"meshd_consul_watch_healthy", map[string]string{"cluster": "users"}, 0},
		{"meshd_consul_watch_consecutive_failures", map[string]string{"cluster": "users"}, 3},
		{"meshd_consul_watch_last_success_timestamp_seconds", map[string]string{"cluster": "users"}, 1700000000},
		{"meshd_config_reloads_total", map[string]string{"result": "ok"}, 5},
		{"meshd_config_reloads_total", map[string]string{"result": "failed"}, 2},
	} {
		if got := mfs.Value(t, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if got := len(mfs.Series("meshd_endpoint_state", ep1)); got != 4 {
		t.Errorf("endpoint 1 has %d state series, want one per state (4)", got)
	}
}

// TestMethodNotUTF8: method names come from the network; a routed one that
// is not valid UTF-8 must neither panic the client library nor break the
// exposition.
func TestMethodNotUTF8(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	observe(m, callrecord.Call{Method: "/x.S\xff/M\xfe", Route: "all", Cluster: "c", Code: codes.OK, Attempts: 1})
	mfs := scrape(t, m)
	if got := mfs.Value(t, "grpc_server_handled_total", map[string]string{"grpc_service": "x.S\uFFFD", "grpc_method": "M\uFFFD"}); got != 1 {
		t.Errorf("handled = %v, want 1", got)
	}
}
