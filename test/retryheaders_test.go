package test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// TestRetryAfterHeaders: on a route with retry, a backend that sends
// header metadata and then UNAVAILABLE with no message (grpc-go's
// SendHeader, then an error) is retried on the other endpoint: every call
// succeeds, the client sees the second backend's headers only, and each
// such call counts one retry. A backend that sent a message first is not
// retried (TestCommittedCallNotRetried); a route without retry forwards
// the headers at once and holds nothing.
func TestRetryAfterHeaders(t *testing.T) {
	t.Parallel()
	bad := startBackends(t, "hf-bad", 1)[0]
	good := startBackends(t, "hf-good", 1)[0]
	bad.FailAll(codes.Unavailable)
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: plain
    match: {method: /grpc.testing.TestService/StreamingOutputCall}
    cluster: one
  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 2, retry_on: [UNAVAILABLE], backoff: {base_interval: 1ms}}
clusters:
  - name: c
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
    retry_budget: {budget_percent: 1000}
  - name: one
    endpoints: [%s]
    health: {disabled: true}
`, bad.Addr, good.Addr, good.Addr))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	const calls = 6 // round robin: half start on the failing backend
	for i := range calls {
		var hdr metadata.MD
		_, err := client.UnaryCall(ctxMD(t, "x-header-first", "1"), &testpb.SimpleRequest{}, grpc.Header(&hdr))
		if err != nil {
			t.Fatalf("call %d: %v, want the retry on the other endpoint to answer", i, err)
		}
		if got := hdr.Get("x-backend"); len(got) != 1 || got[0] != good.Name {
			t.Fatalf("call %d: client saw x-backend %q, want only %q's", i, got, good.Name)
		}
	}
	failed := bad.Calls()
	if failed == 0 || good.Calls() != calls {
		t.Fatalf("attempts: %d on the failing backend, %d on the good one; want some, and %d", failed, good.Calls(), calls)
	}
	route := map[string]string{"route": "r", "cluster": "c"}
	mfs := scrapeMetrics(t, o.Admin)
	if got := mfs.Value(t, "meshd_upstream_retries_total", route); got != float64(failed) {
		t.Errorf("meshd_upstream_retries_total = %v, want %d (one per call that met the failing backend)", got, failed)
	}
	held := mfs.Value(t, "meshd_frame_headers_held_total", map[string]string{"listener": "main"})

	// Without retry: the headers reach the client while the backend still
	// works on the call, and nothing is held.
	st, err := client.StreamingOutputCall(ctxMD(t, "x-header-first", "1", "x-delay", "300ms"), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hdr, err := st.Header(); err != nil || len(hdr.Get("x-backend")) != 1 {
		t.Fatalf("headers %v err %v", hdr, err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv: %v", err)
	}
	mfs = scrapeMetrics(t, o.Admin)
	if got := mfs.Value(t, "meshd_frame_headers_held_total", map[string]string{"listener": "main"}); got != held {
		t.Errorf("meshd_frame_headers_held_total moved from %v to %v on a route without retry", held, got)
	}
}
