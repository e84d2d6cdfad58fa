package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/accesslog"
	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/tracing"
)

// observed is a meshd with its telemetry wired the way `meshd run` wires it
// (cmd/meshd/observe.go): tracing from the given options, metrics with the
// config's method cap, the access log from the config.
type observed struct {
	*mesh
	tp      *tracing.Provider
	metrics *metrics.Metrics
	access  *accesslog.Logger
}

// startObserved runs meshd with yaml and telemetry. topts configure
// tracing; none means tracing off. Telemetry is flushed after meshd stops.
func startObserved(t testing.TB, yaml string, topts ...tracing.Option) *observed {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	o := &observed{tp: &tracing.Provider{}}
	if len(topts) > 0 {
		o.tp, err = tracing.New(context.Background(), topts...)
		if err != nil {
			t.Fatalf("tracing.New: %v", err)
		}
	}
	if cfg.AccessLog.Enabled {
		o.access, err = accesslog.Open(cfg.AccessLog.Path, accesslog.WithSampleRatio(*cfg.AccessLog.SampleRatio))
		if err != nil {
			t.Fatal(err)
		}
	}
	mopts := []metrics.Option{metrics.WithMaxMethods(cfg.Metrics.MaxMethods), metrics.WithDroppedSpans(o.tp.Dropped)}
	obs := []callrecord.Observer{}
	if o.access != nil {
		mopts = append(mopts, metrics.WithDroppedLogLines(o.access.Dropped))
	}
	o.metrics = metrics.New(mopts...)
	obs = append(obs, o.metrics)
	if o.access != nil {
		obs = append(obs, o.access)
	}
	// Registered first, so it runs after meshd has stopped.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = o.tp.Shutdown(ctx) // a test that cares checks Shutdown itself
		if o.access != nil {
			if err := o.access.Close(); err != nil {
				t.Errorf("access log: %v", err)
			}
		}
	})
	sopts := []server.Option{
		server.WithObservers(obs...),
		server.WithAdminOptions(admin.WithMetrics(o.metrics.Handler()), admin.WithHealthPollInterval(10*time.Millisecond),
			admin.WithRecentStats(func() any { return o.metrics.Recent() })),
	}
	if o.tp.Enabled() {
		// As `meshd run` does.
		sopts = append(sopts, server.WithTracing(o.tp))
	}
	o.mesh = runMesh(t, cfg, sopts...)
	o.metrics.SetSource(o.srv)
	return o
}

// runMesh is startMesh for a parsed config and extra server options.
func runMesh(t testing.TB, cfg *config.Config, opts ...server.Option) *mesh {
	t.Helper()
	logOut := io.Discard
	if os.Getenv("MESHD_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	opts = append([]server.Option{server.WithLogger(slog.New(slog.NewTextHandler(logOut, nil)))}, opts...)
	srv, err := server.New(cfg, opts...)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &mesh{srv: srv, stop: cancel, done: make(chan error, 1)}
	go func() { m.done <- srv.Run(ctx) }()
	select {
	case <-srv.Serving():
	case err := <-m.done:
		cancel()
		t.Fatalf("meshd did not start: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("meshd did not start within 10s")
	}
	for _, a := range srv.ListenerAddrs() {
		m.Addr = a
	}
	m.Admin = srv.AdminAddr()
	t.Cleanup(func() { m.Stop(t) })
	return m
}

const obsCallerSpan = "00f067aa0ba902b7"

func obsTraceID(i int) string { return fmt.Sprintf("4bf92f3577b34da6a3ce929d%08x", i+1) }

// TestTraceThroughMeshd: a call with a caller-supplied traceparent yields one
// SERVER span and one CLIENT span per attempt in the caller's trace, the
// backend sees meshd's CLIENT span as its parent, and the access log line
// and the retry metrics agree with the trace. Round robin over a failing
// and a good endpoint makes about half the calls start on the failing one
// and take a second attempt: a transparent retry when the failing endpoint
// refuses connections, a retry by the route's policy when it answers
// UNAVAILABLE. The attempt that reaches the backend carries the caller's
// baggage and tracestate, and grpc-previous-rpc-attempts when it is not the
// first.
func TestTraceThroughMeshd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		retry string // the route's retry section
		bad   func(t *testing.T) string
		md    []string // extra call metadata
	}{
		{
			name: "transparent retry of a refused connection",
			bad:  func(t *testing.T) string { return testkit.FreeAddr(t) },
		},
		{
			name:  "retry policy on UNAVAILABLE",
			retry: "    retry: {attempts: 2, backoff: {base_interval: 1ms}}\n",
			bad: func(t *testing.T) string {
				b := startBackends(t, "failing", 1)[0]
				b.FailAll(codes.Unavailable)
				return b.Addr
			},
			// A trailers-only failure has not committed the call to
			// that backend, so it may be retried.
			md: []string{"x-trailers-only", "1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testTrace(t, tc.retry, tc.bad(t), tc.md)
		})
	}
}

func testTrace(t *testing.T, retry, bad string, extraMD []string) {
	recv := otlptest.Start(t)
	live := startBackends(t, "live", 1)[0]
	logFile := filepath.Join(t.TempDir(), "access.log")
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
access_log: {enabled: true, path: %s}
routes:
  - name: unary
    match: {method: /grpc.testing.TestService/UnaryCall}
    cluster: pair
%sclusters:
  - name: pair
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
    retry_budget: {budget_percent: 100}
`, logFile, retry, bad, live.Addr),
		tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(10*time.Millisecond))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))

	const calls = 6
	backendParent := map[string]string{} // trace id → parent id the backend saw
	previous := map[string][]string{}    // trace id → grpc-previous-rpc-attempts the backend saw
	for i := range calls {
		tid := obsTraceID(i)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, append([]string{
			"traceparent", "00-" + tid + "-" + obsCallerSpan + "-01",
			"tracestate", "vendor=abc",
			"baggage", "tenant=acme"}, extraMD...)...)
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		md := live.LastMetadata()
		tps := md.Get("traceparent")
		if len(tps) != 1 {
			t.Fatalf("call %d: backend saw traceparent %q, want one", i, tps)
		}
		parts := strings.Split(tps[0], "-")
		if len(parts) != 4 || parts[1] != tid || parts[3] != "01" {
			t.Fatalf("call %d: backend traceparent %q, want trace %s, sampled", i, tps[0], tid)
		}
		backendParent[tid] = parts[2]
		previous[tid] = md.Get("grpc-previous-rpc-attempts")
		if got := md.Get("baggage"); len(got) != 1 || got[0] != "tenant=acme" {
			t.Errorf("call %d: backend baggage %q, want the caller's", i, got)
		}
		if got := md.Get("tracestate"); len(got) != 1 || got[0] != "vendor=abc" {
			t.Errorf("call %d: backend tracestate %q, want the caller's", i, got)
		}
	}

	// Every trace is complete once its SERVER span and the CLIENT span of
	// the attempt that reached the backend have arrived.
	var traces map[string][]*tracepb.Span
	testkit.WaitFor(t, 10*time.Second, "every call's spans", func() bool {
		traces = map[string][]*tracepb.Span{}
		for _, s := range recv.Spans() {
			id := hex.EncodeToString(s.GetTraceId())
			traces[id] = append(traces[id], s)
		}
		for i := range calls {
			tid := obsTraceID(i)
			if spanByID(traces[tid], backendParent[tid]) == nil || len(spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_SERVER)) == 0 {
				return false
			}
		}
		return true
	})
	if len(traces) != calls {
		t.Errorf("spans in %d traces, want exactly the %d callers' traces", len(traces), calls)
	}

	attemptsByTrace := map[string]int{}
	retried := 0
	for i := range calls {
		tid := obsTraceID(i)
		spans := traces[tid]
		servers := spansOfKind(spans, tracepb.Span_SPAN_KIND_SERVER)
		if len(servers) != 1 {
			t.Fatalf("trace %s: %d SERVER spans, want 1", tid, len(servers))
		}
		srv := servers[0]
		if got := hex.EncodeToString(srv.GetParentSpanId()); got != obsCallerSpan {
			t.Errorf("trace %s: SERVER parent %s, want the caller's span %s", tid, got, obsCallerSpan)
		}
		if srv.GetTraceState() != "vendor=abc" {
			t.Errorf("trace %s: SERVER tracestate %q, want the caller's", tid, srv.GetTraceState())
		}
		wantSpanAttrs(t, srv, map[string]any{
			"rpc.system": "grpc", "rpc.service": "grpc.testing.TestService", "rpc.method": "UnaryCall",
			"meshd.route": "unary", "meshd.cluster": "pair", "rpc.grpc.status_code": 0,
		})
		clients := spansOfKind(spans, tracepb.Span_SPAN_KIND_CLIENT)
		sort.Slice(clients, func(a, b int) bool {
			return intAttr(clients[a], "meshd.attempt") < intAttr(clients[b], "meshd.attempt")
		})
		if len(clients) == 0 || len(clients) > 2 {
			t.Fatalf("trace %s: %d CLIENT spans, want 1 or 2 (one per attempt)", tid, len(clients))
		}
		for n, c := range clients {
			if got := hex.EncodeToString(c.GetParentSpanId()); got != hex.EncodeToString(srv.GetSpanId()) {
				t.Errorf("trace %s attempt %d: CLIENT parent %s, want the SERVER span", tid, n+1, got)
			}
			last := n == len(clients)-1
			endpoint, code := bad, int(codes.Unavailable)
			if last {
				endpoint, code = live.Addr, 0
			}
			wantSpanAttrs(t, c, map[string]any{
				"rpc.system": "grpc", "rpc.service": "grpc.testing.TestService", "rpc.method": "UnaryCall",
				"meshd.attempt": n + 1, "meshd.endpoint": endpoint, "rpc.grpc.status_code": code,
			})
			if last && hex.EncodeToString(c.GetSpanId()) != backendParent[tid] {
				t.Errorf("trace %s: backend's parent %s is not the last CLIENT span %s", tid, backendParent[tid], hex.EncodeToString(c.GetSpanId()))
			}
		}
		attemptsByTrace[tid] = len(clients)
		if len(clients) == 2 {
			retried++
		}
		// The attempt that reached the backend says how many came before.
		if prev := previous[tid]; len(clients) == 2 && (len(prev) != 1 || prev[0] != "1") || len(clients) == 1 && len(prev) != 0 {
			t.Errorf("trace %s: %d attempts, backend saw grpc-previous-rpc-attempts %q", tid, len(clients), prev)
		}
	}
	if retried == 0 {
		t.Errorf("no call was retried over %d calls on [failing, live]: want separate CLIENT spans per attempt", calls)
	}

	// The access log names the same traces, attempts and endpoints.
	lines := waitLogLines(t, logFile, calls)
	for _, l := range lines {
		tid, _ := l["trace_id"].(string)
		want, ok := attemptsByTrace[tid]
		if !ok {
			t.Errorf("access log line with unknown trace id: %v", l)
			continue
		}
		if l["attempts"] != float64(want) || l["endpoint"] != live.Addr || l["code"] != "OK" ||
			l["route"] != "unary" || l["cluster"] != "pair" || l["method"] != "/grpc.testing.TestService/UnaryCall" {
			t.Errorf("access log line %v, want %d attempts ending on %s, OK", l, want, live.Addr)
		}
		// The request message: payload (tag, length) holding body (tag,
		// length, 5 bytes).
		if l["bytes_in"] != float64(9) {
			t.Errorf("bytes_in = %v, want 9", l["bytes_in"])
		}
	}
	// And so do the metrics.
	mfs := scrapeMetrics(t, o.Admin)
	route := map[string]string{"route": "unary", "cluster": "pair"}
	if got := mfs.Value(t, "meshd_upstream_retries_total", route); got != float64(retried) {
		t.Errorf("meshd_upstream_retries_total = %v, want the %d retried traces", got, retried)
	}
	if got := mfs.Value(t, "meshd_upstream_attempts_total", route); got != float64(calls+retried) {
		t.Errorf("meshd_upstream_attempts_total = %v, want %d", got, calls+retried)
	}
}

// TestCollectorDown: with the collector unreachable, calls go on at full
// speed and the spans that cannot be exported are counted, in Dropped and
// on /metrics.
func TestCollectorDown(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 1)
	o := startObserved(t, simpleConfig(bs, ""),
		tracing.WithEndpoint(testkit.FreeAddr(t)), tracing.WithSampleRatio(1),
		tracing.WithBatchTimeout(10*time.Millisecond), tracing.WithExportTimeout(200*time.Millisecond))
	cc := dial(t, o.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d with the collector down: %v", i, err)
		}
		// Generous for a loaded CI machine, but far below the export
		// timeout a blocked call would have waited for.
		if d := time.Since(start); d > time.Second {
			t.Errorf("call %d took %v with the collector down", i, d)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "spans to be counted as dropped", func() bool { return o.tp.Dropped() > 0 })
	dropped := o.tp.Dropped()
	got := scrapeMetrics(t, o.Admin).Value(t, "meshd_tracing_dropped_spans_total", nil)
	if got < float64(dropped) {
		t.Errorf("meshd_tracing_dropped_spans_total = %v, want at least %d", got, dropped)
	}
}

// TestMetricsAfterTraffic sends known traffic and checks /metrics, parsed
// with Prometheus' own text parser: exact counts, populated histograms,
// method labels capped, state metrics present, reloads counted.
func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 2)
	yaml := fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
metrics: {max_methods: 2}
routes:
  - name: unary
    match: {method: /grpc.testing.TestService/UnaryCall}
    cluster: backends
  - name: testservice
    match: {service: grpc.testing.TestService}
    cluster: backends
clusters:
  - name: backends
    endpoints: %s
`, addrs(bs))
	o := startObserved(t, yaml)
	cc := dial(t, o.Addr)
	waitServing(t, cc) // EmptyCall: the first method seen
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const ok, notFound, unmatched, overCap = 5, 3, 4, 2
	for range ok {
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for range notFound {
		fctx := metadata.AppendToOutgoingContext(ctx, "x-fail", "NOT_FOUND")
		if _, err := client.UnaryCall(fctx, &testpb.SimpleRequest{}); status.Code(err) != codes.NotFound {
			t.Fatalf("x-fail NOT_FOUND: %v", err)
		}
	}
	for i := range unmatched {
		err := cc.Invoke(ctx, fmt.Sprintf("/evil.Svc/M%d", i), &testpb.Empty{}, &testpb.Empty{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("unrouted call: %v", err)
		}
	}
	// Routed methods past the cap of 2 (EmptyCall, UnaryCall): "other".
	for i := range overCap {
		err := cc.Invoke(ctx, fmt.Sprintf("/grpc.testing.TestService/Nope%d", i), &testpb.Empty{}, &testpb.Empty{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("call to a method the backend lacks: %v", err)
		}
	}

	mfs := scrapeMetrics(t, o.Admin)
	unary := map[string]string{"grpc_service": "grpc.testing.TestService", "grpc_method": "UnaryCall", "route": "unary", "cluster": "backends"}
	with := func(base map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"grpc_server_handled_total", with(unary, "grpc_code", "OK"), ok},
		{"grpc_server_handled_total", with(unary, "grpc_code", "NotFound"), notFound},
		{"grpc_server_handled_total", map[string]string{"grpc_service": "unmatched", "grpc_method": "unmatched", "grpc_code": "Unimplemented"}, unmatched},
		{"grpc_server_handled_total", map[string]string{"grpc_service": "other", "grpc_method": "other", "route": "testservice", "grpc_code": "Unimplemented"}, overCap},
		{"meshd_upstream_attempts_total", map[string]string{"route": "unary", "cluster": "backends"}, ok + notFound},
		{"meshd_upstream_retries_total", map[string]string{"route": "unary", "cluster": "backends"}, 0},
		{"meshd_active_streams", nil, 0},
		{"meshd_cluster_endpoints", map[string]string{"cluster": "backends"}, 2},
		{"meshd_cluster_healthy_endpoints", map[string]string{"cluster": "backends"}, 2},
		{"meshd_endpoint_state", map[string]string{"endpoint": bs[0].Addr, "state": "serving"}, 1},
		{"meshd_endpoint_state", map[string]string{"endpoint": bs[1].Addr, "state": "serving"}, 1},
		{"meshd_endpoint_state", map[string]string{"endpoint": bs[1].Addr, "state": "ejected"}, 0},
		{"meshd_endpoint_ejections_total", map[string]string{"endpoint": bs[0].Addr}, 0},
		{"meshd_config_reloads_total", map[string]string{"result": "ok"}, 0},
		{"meshd_tracing_dropped_spans_total", nil, 0},
	} {
		if got := mfs.Value(t, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if got, want := mfs.LabelValues("grpc_server_handled_total", "grpc_method"), "[EmptyCall UnaryCall other unmatched]"; fmt.Sprint(got) != want {
		t.Errorf("grpc_method label values %v, want %s (capped at 2)", got, want)
	}
	hs := mfs.Series("grpc_server_handling_seconds", unary)
	if len(hs) != 1 {
		t.Fatalf("handling_seconds series for UnaryCall: %d, want 1", len(hs))
	}
	h := hs[0].GetHistogram()
	if h.GetSampleCount() != ok+notFound || h.GetSampleSum() <= 0 {
		t.Errorf("histogram count %d sum %v, want %d calls and a positive sum", h.GetSampleCount(), h.GetSampleSum(), ok+notFound)
	}
	if bk := h.GetBucket(); len(bk) == 0 || bk[len(bk)-1].GetCumulativeCount() != ok+notFound {
		t.Errorf("histogram buckets %v do not hold every call", bk)
	}
	for _, fam := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, found := mfs[fam]; !found {
			t.Errorf("%s missing from /metrics", fam)
		}
	}

	// Reloads: one that applies, one that is rejected.
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// A config without listeners is invalid: rejected, the old one serves.
	if err := o.srv.Reload(&config.Config{Clusters: cfg.Clusters}); err == nil {
		t.Fatal("reload of an invalid config succeeded")
	}
	mfs = scrapeMetrics(t, o.Admin)
	for res, want := range map[string]float64{"ok": 1, "failed": 1} {
		if got := mfs.Value(t, "meshd_config_reloads_total", map[string]string{"result": res}); got != want {
			t.Errorf("meshd_config_reloads_total{result=%q} = %v, want %v", res, got, want)
		}
	}
}

// TestAccessLog: one parseable JSON line per call with every field (bytes
// count message bytes), and none with sample_ratio 0.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 1)
	for _, tc := range []struct {
		name, ratio string
		want        int
	}{
		{"all", "1.0", 3},
		{"none", "0", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logFile := filepath.Join(t.TempDir(), "access.log")
			o := startObserved(t, simpleConfig(bs, "")+fmt.Sprintf("access_log: {enabled: true, path: %s, sample_ratio: %s}\n", logFile, tc.ratio))
			cc := dial(t, o.Addr)
			client := testpb.NewTestServiceClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			testkit.WaitFor(t, 10*time.Second, "endpoint serving", func() bool {
				return scrapeMetrics(t, o.Admin).Value(t, "meshd_cluster_healthy_endpoints", nil) == 1
			})
			for range 2 {
				if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}); err != nil {
					t.Fatal(err)
				}
			}
			fctx := metadata.AppendToOutgoingContext(ctx, "x-fail", "INTERNAL")
			if _, err := client.UnaryCall(fctx, &testpb.SimpleRequest{}); status.Code(err) != codes.Internal {
				t.Fatalf("x-fail INTERNAL: %v", err)
			}
			if tc.want == 0 {
				// Every call has been observed before its status reached
				// the client; Close writes whatever is queued.
				if err := o.access.Close(); err != nil {
					t.Fatal(err)
				}
				if lines := readLogLines(t, logFile); len(lines) != 0 {
					t.Errorf("sample_ratio 0 logged %d lines", len(lines))
				}
				return
			}
			lines := waitLogLines(t, logFile, tc.want)
			codesSeen := map[string]int{}
			for _, l := range lines {
				codesSeen[l["code"].(string)]++
				for _, k := range []string{"time", "method", "route", "cluster", "endpoint", "code", "duration_ms", "bytes_in", "bytes_out", "attempts", "trace_id"} {
					if _, ok := l[k]; !ok {
						t.Errorf("line lacks %q: %v", k, l)
					}
				}
				if l["endpoint"] != bs[0].Addr || l["trace_id"] != "" || l["attempts"] != 1.0 {
					t.Errorf("line %v: want endpoint %s, no trace id (tracing off), 1 attempt", l, bs[0].Addr)
				}
				if l["code"] == "OK" && (l["bytes_in"] != 104.0 || l["bytes_out"] == 0.0) {
					t.Errorf("line %v: want 104 bytes in (100-byte body) and some out", l)
				}
			}
			if codesSeen["OK"] != 2 || codesSeen["INTERNAL"] != 1 {
				t.Errorf("codes logged %v, want 2 OK and 1 INTERNAL", codesSeen)
			}
		})
	}
}

// TestAdminGRPCHealthDrain: the admin port answers grpc.health.v1 next to
// HTTP; when a drain begins, the health check and /ready fail at once while
// a call is still in flight.
func TestAdminGRPCHealthDrain(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 1)
	o := startObserved(t, simpleConfig(bs, ""))
	cc := dial(t, o.Addr)
	waitServing(t, cc)
	hc := healthpb.NewHealthClient(dial(t, o.Admin))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check before drain: %v %v, want SERVING", resp, err)
	}
	if code, _ := adminGet(t, o.Admin, "/ready"); code != http.StatusOK {
		t.Fatalf("/ready before drain = %d", code)
	}

	// A slow call keeps the drain going while we look.
	callDone := make(chan error, 1)
	go func() {
		dctx := metadata.AppendToOutgoingContext(ctx, "x-delay", "1s")
		_, err := testpb.NewTestServiceClient(cc).UnaryCall(dctx, &testpb.SimpleRequest{})
		callDone <- err
	}()
	testkit.WaitFor(t, 5*time.Second, "the slow call to be in flight", func() bool {
		return scrapeMetrics(t, o.Admin).Value(t, "meshd_active_streams", nil) == 1
	})
	o.stop() // SIGTERM
	testkit.WaitFor(t, 5*time.Second, "health NOT_SERVING during the drain", func() bool {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if code, _ := adminGet(t, o.Admin, "/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/ready during drain = %d, want 503", code)
	}
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "liveness"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness during drain: %v %v, want SERVING", resp, err)
	}
	if err := <-callDone; err != nil {
		t.Errorf("in-flight call during drain: %v", err)
	}
}

// --- helpers ---

func spansOfKind(spans []*tracepb.Span, kind tracepb.Span_SpanKind) []*tracepb.Span {
	var out []*tracepb.Span
	for _, s := range spans {
		if s.GetKind() == kind {
			out = append(out, s)
		}
	}
	return out
}

func spanByID(spans []*tracepb.Span, id string) *tracepb.Span {
	for _, s := range spans {
		if hex.EncodeToString(s.GetSpanId()) == id {
			return s
		}
	}
	return nil
}

func spanAttr(s *tracepb.Span, key string) *commonpb.AnyValue {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

func intAttr(s *tracepb.Span, key string) int64 { return spanAttr(s, key).GetIntValue() }

func wantSpanAttrs(t testing.TB, s *tracepb.Span, want map[string]any) {
	t.Helper()
	for k, w := range want {
		v := spanAttr(s, k)
		if v == nil {
			t.Errorf("%s span: attribute %s missing", s.GetKind(), k)
			continue
		}
		switch w := w.(type) {
		case string:
			if v.GetStringValue() != w {
				t.Errorf("%s span: %s = %q, want %q", s.GetKind(), k, v.GetStringValue(), w)
			}
		case int:
			if x, ok := v.GetValue().(*commonpb.AnyValue_IntValue); !ok || x.IntValue != int64(w) {
				t.Errorf("%s span: %s = %v, want %d", s.GetKind(), k, v, w)
			}
		}
	}
}

func readLogLines(t testing.TB, file string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line is not JSON: %v\n%s", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// waitLogLines waits until the access log has n lines (it is written
// asynchronously) and returns them; more than n is an error.
func waitLogLines(t testing.TB, file string, n int) []map[string]any {
	t.Helper()
	var lines []map[string]any
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("%d access log lines", n), func() bool {
		lines = readLogLines(t, file)
		return len(lines) >= n
	})
	if len(lines) != n {
		t.Errorf("%d access log lines, want %d", len(lines), n)
	}
	return lines
}
