package test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// TestRetryAttemptsCounted: every attempt of a retried call is counted in
// Call.Attempts, so in the access log and in meshd_upstream_attempts_total
// and meshd_upstream_retries_total, and each attempt really reached a
// backend.
func TestRetryAttemptsCounted(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "ac", 2)
	logFile := filepath.Join(t.TempDir(), "access.log")
	o := startObserved(t, fmt.Sprintf(`
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
`, logFile, addrs(bs)))
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
	mfs := scrapeMetrics(t, o.Admin)
	route := map[string]string{"route": "r", "cluster": "c"}
	if got := mfs.Value(t, "meshd_upstream_attempts_total", route); got != 3*calls {
		t.Errorf("meshd_upstream_attempts_total = %v, want %d", got, 3*calls)
	}
	if got := mfs.Value(t, "meshd_upstream_retries_total", route); got != 2*calls {
		t.Errorf("meshd_upstream_retries_total = %v, want %d", got, 2*calls)
	}
}

// TestRerouteNotReachedNoRetryPolicy: on a route without a retry policy, a
// call whose endpoint refuses connections never reached a backend, so meshd
// sends it to another endpoint, without keeping a copy of the request. Round
// robin over [dead, live], health
// checking off (the dead endpoint stays pickable): every call succeeds on
// live, with its whole request, and the calls that started on the dead
// endpoint show their second attempt in the access log and in
// meshd_upstream_attempts_total / meshd_upstream_retries_total.
func TestRerouteNotReachedNoRetryPolicy(t *testing.T) {
	t.Parallel()
	live := startBackends(t, "rr-live", 1)[0]
	logFile := filepath.Join(t.TempDir(), "access.log")
	o := startObserved(t, fmt.Sprintf(`
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
`, logFile, testkit.FreeAddr(t), live.Addr))
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
	mfs := scrapeMetrics(t, o.Admin)
	route := map[string]string{"route": "r", "cluster": "c"}
	if got := mfs.Value(t, "meshd_upstream_attempts_total", route); got != float64(attempts) {
		t.Errorf("meshd_upstream_attempts_total = %v, want %d (the access log's)", got, attempts)
	}
	if got := mfs.Value(t, "meshd_upstream_retries_total", route); got != float64(rerouted) {
		t.Errorf("meshd_upstream_retries_total = %v, want %d", got, rerouted)
	}
}
