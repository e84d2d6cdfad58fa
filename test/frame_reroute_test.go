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

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/tracing"
)

// TestRerouteNotReachedNoRetryPolicy: on a route without a retry policy, a
// call whose endpoint refuses connections never reached a backend, so meshd
// sends it to another endpoint, on both engines (the frame engine without
// keeping a copy of the request). Round robin over [dead, live], health
// checking off (the dead endpoint stays pickable): every call succeeds on
// live, with its whole request, and the calls that started on the dead
// endpoint show their second attempt in the access log and in
// meshd_upstream_attempts_total / meshd_upstream_retries_total.
func TestRerouteNotReachedNoRetryPolicy(t *testing.T) {
	t.Parallel()
	forEngines(t, testRerouteNotReached)
}

func testRerouteNotReached(t *testing.T, engine string) {
	live := startBackends(t, "rr-live", 1)[0]
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
clusters:
  - name: c
    lb: round_robin
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
`, engine, logFile, refusedAddr(t), live.Addr))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))

	const rounds = 4 // a unary call and a client stream each
	for i := range rounds {
		resp, err := client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 200)}})
		if err != nil {
			t.Fatalf("unary %d: %v", i, err)
		}
		if resp.GetServerId() != "rr-live-0" || len(resp.GetPayload().GetBody()) != 200 {
			t.Fatalf("unary %d answered by %q with %d bytes", i, resp.GetServerId(), len(resp.GetPayload().GetBody()))
		}
		st, err := client.StreamingInputCall(ctxMD(t))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := st.CloseAndRecv()
		if err != nil || r.GetAggregatedPayloadSize() != 300 {
			t.Fatalf("stream %d: %v, %d bytes", i, err, r.GetAggregatedPayloadSize())
		}
	}
	const calls = 2 * rounds
	if got := live.Calls(); got != calls {
		t.Errorf("live backend saw %d calls, want %d", got, calls)
	}
	attempts, rerouted := 0, 0
	for _, l := range waitLogLines(t, logFile, calls) {
		n, _ := l["attempts"].(float64)
		if l["code"] != "OK" || n < 1 || n > 2 || l["endpoint"] != live.Addr {
			t.Errorf("access log line %v, want OK on %s after 1 or 2 attempts", l, live.Addr)
		}
		attempts += int(n)
		if n == 2 {
			rerouted++
		}
	}
	if rerouted == 0 {
		t.Fatal("no call started on the dead endpoint: round robin did not alternate")
	}
	mfs := obsScrape(t, o.Admin)
	route := map[string]string{"route": "r", "cluster": "c"}
	if got := obsValue(t, mfs, "meshd_upstream_attempts_total", route); got != float64(attempts) {
		t.Errorf("meshd_upstream_attempts_total = %v, want %d (the access log's)", got, attempts)
	}
	if got := obsValue(t, mfs, "meshd_upstream_retries_total", route); got != float64(rerouted) {
		t.Errorf("meshd_upstream_retries_total = %v, want %d", got, rerouted)
	}
}

// TestFrameRerouteTrace: on the frame engine a call rerouted from an
// endpoint that refuses connections (a route without retries) has a CLIENT
// span per attempt (meshd.attempt 1 on the dead endpoint with UNAVAILABLE,
// 2 on the live one), both children of the one SERVER span; the backend saw
// the last CLIENT span as its parent, the caller's baggage, and
// grpc-previous-rpc-attempts 1.
func TestFrameRerouteTrace(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	dead := refusedAddr(t)
	live := startBackends(t, "frlive", 1)[0]
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
engine: frame
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: r
    match: {prefix: /}
    cluster: c
clusters:
  - name: c
    lb: round_robin
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
`, dead, live.Addr)), "test.yaml")
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

	const calls = 4
	backendParent := map[string]string{}
	rerouted := map[string]bool{}
	for i := range calls {
		tid := obsTraceID(200 + i)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tid+"-"+obsCallerSpan+"-01", "baggage", "tenant=acme")
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		md := live.LastMetadata()
		tps := md.Get("traceparent")
		if len(tps) != 1 || len(strings.Split(tps[0], "-")) != 4 {
			t.Fatalf("call %d: backend traceparent %q", i, tps)
		}
		backendParent[tid] = strings.Split(tps[0], "-")[2]
		if got := md.Get("baggage"); len(got) != 1 || got[0] != "tenant=acme" {
			t.Errorf("call %d: backend baggage %q, want the caller's", i, got)
		}
		if prev := md.Get("grpc-previous-rpc-attempts"); len(prev) > 0 {
			if len(prev) != 1 || prev[0] != "1" {
				t.Errorf("call %d: grpc-previous-rpc-attempts %q, want none or \"1\"", i, prev)
			}
			rerouted[tid] = true
		}
	}
	if len(rerouted) == 0 {
		t.Fatal("no call started on the dead endpoint")
	}
	var traces map[string][]*tracepb.Span
	waitFor(t, 10*time.Second, "every call's spans", func() bool {
		traces = map[string][]*tracepb.Span{}
		for _, s := range recv.Spans() {
			id := hex.EncodeToString(s.GetTraceId())
			traces[id] = append(traces[id], s)
		}
		for i := range calls {
			tid := obsTraceID(200 + i)
			if spanByID(traces[tid], backendParent[tid]) == nil || len(spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_SERVER)) == 0 {
				return false
			}
		}
		return true
	})
	for i := range calls {
		tid := obsTraceID(200 + i)
		servers := spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_SERVER)
		clients := spansOfKind(traces[tid], tracepb.Span_SPAN_KIND_CLIENT)
		want := 1
		if rerouted[tid] {
			want = 2
		}
		if len(servers) != 1 || len(clients) != want {
			t.Fatalf("trace %s: %d SERVER and %d CLIENT spans, want 1 and %d", tid, len(servers), len(clients), want)
		}
		sort.Slice(clients, func(a, b int) bool {
			return intAttr(clients[a], "meshd.attempt") < intAttr(clients[b], "meshd.attempt")
		})
		for n, c := range clients {
			last := n == len(clients)-1
			endpoint, code := dead, int(codes.Unavailable)
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
	}
}
