package test

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/tracing"
)

// TestRetryAttemptsCounted: every attempt of a retried call is counted in
// Call.Attempts, so in the access log and in meshd_upstream_attempts_total
// and meshd_upstream_retries_total, on both engines, and each attempt
// really reached a backend.
func TestRetryAttemptsCounted(t *testing.T) {
	t.Parallel()
	forEngines(t, testRetryAttemptsCounted)
}

func testRetryAttemptsCounted(t *testing.T, engine string) {
	bs := startBackends(t, "ac", 2)
	logFile := filepath.Join(t.TempDir(), "access.log")
	o := startObserved(t, fmt.Sprintf(`
engine: %s
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
access_log: {enabled: true, path: %s}
routes:
  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 3, backoff: {base_interval: 1ms}}
clusters:
  - name: c
    endpoints: %s
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
    retry_budget: {budget_percent: 1000}
`, engine, logFile, addrs(bs)))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	for _, b := range bs {
		b.FailAll(codes.Unavailable)
	}
	const calls = 5
	base := bs[0].Calls() + bs[1].Calls()
	for i := range calls {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-trailers-only", "1"), 10*time.Second)
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d: %v, want the backends' UNAVAILABLE", i, err)
		}
	}
	if got := bs[0].Calls() + bs[1].Calls() - base; got != 3*calls {
		t.Fatalf("backends saw %d attempts, want %d", got, 3*calls)
	}
	for _, l := range waitLogLines(t, logFile, calls) {
		if l["attempts"] != float64(3) || l["code"] != "UNAVAILABLE" {
			t.Errorf("access log line %v, want 3 attempts, UNAVAILABLE", l)
		}
	}
	mfs := obsScrape(t, o.Admin)
	route := map[string]string{"route": "r", "cluster": "c"}
	if got := obsValue(t, mfs, "meshd_upstream_attempts_total", route); got != 3*calls {
		t.Errorf("meshd_upstream_attempts_total = %v, want %d", got, 3*calls)
	}
	if got := obsValue(t, mfs, "meshd_upstream_retries_total", route); got != 2*calls {
		t.Errorf("meshd_upstream_retries_total = %v, want %d", got, 2*calls)
	}
}

// TestFrameRetryTrace: on the frame engine each attempt of a retried call
// is its own CLIENT span (meshd.attempt 1, 2), children of the one SERVER
// span; the failed attempt's span carries UNAVAILABLE and the backend that
// answered saw the last CLIENT span as its parent.
func TestFrameRetryTrace(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	bad := startBackends(t, "ftbad", 1)[0]
	live := startBackends(t, "ftlive", 1)[0]
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
engine: frame
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 2, backoff: {base_interval: 1ms}}
clusters:
  - name: c
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
    retry_budget: {budget_percent: 100}
`, bad.Addr, live.Addr)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tracing.New(context.Background(), tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	})
	m := runMesh(t, cfg, server.WithTracing(tp))
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	bad.FailAll(codes.Unavailable)

	// Round robin over [bad, live]: about half the calls start on bad.
	const calls = 6
	backendParent := map[string]string{}
	for i := range calls {
		tid := obsTraceID(100 + i)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tid+"-"+obsCallerSpan+"-01", "x-trailers-only", "1")
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		tps := live.LastMetadata().Get("traceparent")
		if len(tps) != 1 || len(strings.Split(tps[0], "-")) != 4 {
			t.Fatalf("call %d: backend traceparent %q", i, tps)
		}
		backendParent[tid] = strings.Split(tps[0], "-")[2]
	}
	var traces map[string][]*tracepb.Span
	waitFor(t, 10*time.Second, "every call's spans", func() bool {
		traces = map[string][]*tracepb.Span{}
		for _, s := range recv.Spans() {
			id := hex.EncodeToString(s.GetTraceId())
			traces[id] = append(traces[id], s)
		}
		for i := range calls {
			tid := obsTraceID(100 + i)
			if spanByID(traces[tid], backendParent[tid]) == nil || len(spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_SERVER)) == 0 {
				return false
			}
		}
		return true
	})
	retried := 0
	for i := range calls {
		tid := obsTraceID(100 + i)
		servers := spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_SERVER)
		clients := spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_CLIENT)
		if len(servers) != 1 || len(clients) == 0 || len(clients) > 2 {
			t.Fatalf("trace %s: %d SERVER and %d CLIENT spans, want 1 and 1 or 2", tid, len(servers), len(clients))
		}
		sort.Slice(clients, func(a, b int) bool {
			return intAttr(clients[a], "meshd.attempt") < intAttr(clients[b], "meshd.attempt")
		})
		for n, c := range clients {
			last := n == len(clients)-1
			endpoint, code := bad.Addr, int(codes.Unavailable)
			if last {
				endpoint, code = live.Addr, 0
			}
			wantSpanAttrs(t, c, map[string]any{"meshd.attempt": n + 1, "meshd.endpoint": endpoint, "rpc.grpc.status_code": code})
			if got, want := hex.EncodeToString(c.GetParentSpanId()), hex.EncodeToString(servers[0].GetSpanId()); got != want {
				t.Errorf("trace %s attempt %d: CLIENT parent %s, want the SERVER span %s", tid, n+1, got, want)
			}
			if last && hex.EncodeToString(c.GetSpanId()) != backendParent[tid] {
				t.Errorf("trace %s: the backend's parent is not the last CLIENT span", tid)
			}
		}
		if len(clients) == 2 {
			retried++
		}
	}
	if retried == 0 {
		t.Errorf("no call of %d was retried", calls)
	}
}
