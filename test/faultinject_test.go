package test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/tracing"
)

// faultMesh starts meshd with one backend and the routes given (each
// names cluster c).
func faultMesh(t *testing.T, routes string) (*observed, testpb.TestServiceClient, int64Func) {
	t.Helper()
	b := startBackends(t, "fi", 1)[0]
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
%s
clusters:
  - name: c
    endpoints: [%s]
    health: {disabled: true}
`, routes, b.Addr))
	return o, testpb.NewTestServiceClient(dial(t, o.Addr)), b.Calls
}

type int64Func = func() int64

// TestFaultAbortPercent: a route aborting 5% of its calls fails 5% ± 1.5
// points of them, each with the configured code and a message saying the
// route injected it, none reaching the backend, all counted.
func TestFaultAbortPercent(t *testing.T) {
	t.Parallel()
	o, client, backendCalls := faultMesh(t, `  - name: drill
    match: {prefix: /}
    cluster: c
    fault: {abort: {code: UNAVAILABLE, percent: 5}}`)
	const calls, workers = 4000, 8 // σ of the share ≈ 0.35 points
	var mu sync.Mutex
	aborted, other := 0, []error(nil)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.EmptyCall(ctx, &testpb.Empty{})
				cancel()
				if err == nil {
					continue
				}
				mu.Lock()
				if s := status.Convert(err); s.Code() == codes.Unavailable && s.Message() == "meshd: fault injected by route drill" {
					aborted++
				} else {
					other = append(other, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("%d calls failed otherwise, first: %v", len(other), other[0])
	}
	share := 100 * float64(aborted) / calls
	t.Logf("aborted %d of %d calls: %.2f%%", aborted, calls, share)
	if share < 3.5 || share > 6.5 {
		t.Errorf("aborted %.2f%% of the calls, want 5 ± 1.5", share)
	}
	if got := backendCalls(); got != calls-int64(aborted) {
		t.Errorf("the backend saw %d calls, want %d (aborted calls never reach it)", got, calls-aborted)
	}
	mfs := scrapeMetrics(t, o.Admin)
	if got := mfs.Value(t, "meshd_fault_injected_total", map[string]string{"route": "drill", "kind": "abort"}); got != float64(aborted) {
		t.Errorf("meshd_fault_injected_total{kind=abort} = %v, want %d", got, aborted)
	}
}

// TestFaultHeaderGated: with fault.header set, only calls carrying that
// metadata key get faults, even at 100%.
func TestFaultHeaderGated(t *testing.T) {
	t.Parallel()
	_, client, backendCalls := faultMesh(t, `  - name: drill
    match: {prefix: /}
    cluster: c
    fault: {abort: {code: INTERNAL, percent: 100}, delay: {fixed: 1ms, percent: 100}, header: x-fault-drill}`)
	const plain, drill = 200, 50
	for i := range plain {
		if _, err := client.EmptyCall(ctxMD(t, "x-other", "1"), &testpb.Empty{}); err != nil {
			t.Fatalf("call %d without the header: %v", i, err)
		}
	}
	for i := range drill {
		_, err := client.EmptyCall(ctxMD(t, "x-fault-drill", "on"), &testpb.Empty{})
		if s := status.Convert(err); s.Code() != codes.Internal || s.Message() != "meshd: fault injected by route drill" {
			t.Fatalf("call %d with the header: %v, want the injected INTERNAL", i, err)
		}
	}
	if got := backendCalls(); got != plain {
		t.Fatalf("the backend saw %d calls, want the %d without the header", got, plain)
	}
}

// TestFaultDelayE2E: an injected delay shows in the call's latency, is
// counted, and counts against the deadline: a call whose deadline is
// shorter than the delay gets DEADLINE_EXCEEDED and never reaches the
// backend.
func TestFaultDelayE2E(t *testing.T) {
	t.Parallel()
	const delay = 300 * time.Millisecond
	o, client, backendCalls := faultMesh(t, `  - name: slow
    match: {prefix: /}
    cluster: c
    fault: {delay: {fixed: 300ms, percent: 100}}`)
	start := time.Now()
	if _, err := client.EmptyCall(ctxMD(t), &testpb.Empty{}); err != nil {
		t.Fatalf("delayed call: %v", err)
	}
	if took := time.Since(start); took < delay {
		t.Fatalf("answered after %v, before the %v delay", took, delay)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-case", "short"), 100*time.Millisecond)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call with a 100ms deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	if got := backendCalls(); got != 1 {
		t.Fatalf("the backend saw %d calls, want 1 (the short call expires in the delay)", got)
	}
	// The expired call's record may land just after the client's answer.
	labels := map[string]string{"route": "slow", "kind": "delay"}
	testkit.WaitFor(t, 5*time.Second, "meshd_fault_injected_total{kind=delay} = 2", func() bool {
		ms := scrapeMetrics(t, o.Admin).Series("meshd_fault_injected_total", labels)
		return len(ms) == 1 && ms[0].GetCounter().GetValue() == 2
	})
}

// TestFaultSpans: the SERVER span of a call with an injected fault says
// which (meshd.fault), so a drill's failures are told apart in traces.
func TestFaultSpans(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	b := startBackends(t, "fs", 1)[0]
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: aborted
    match: {method: /grpc.testing.TestService/UnaryCall}
    cluster: c
    fault: {abort: {code: UNAVAILABLE, percent: 100}}
  - name: delayed
    match: {prefix: /}
    cluster: c
    fault: {delay: {fixed: 10ms, percent: 100}}
clusters:
  - name: c
    endpoints: [%s]
    health: {disabled: true}
`, b.Addr), tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(10*time.Millisecond))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	if _, err := client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("aborted call: %v", err)
	}
	if _, err := client.EmptyCall(ctxMD(t), &testpb.Empty{}); err != nil {
		t.Fatalf("delayed call: %v", err)
	}
	byRoute := map[string]*tracepb.Span{}
	testkit.WaitFor(t, 10*time.Second, "both SERVER spans", func() bool {
		for _, s := range spansOfKind(recv.Spans(), tracepb.Span_SPAN_KIND_SERVER) {
			if v := spanAttr(s, "meshd.route"); v != nil {
				byRoute[v.GetStringValue()] = s
			}
		}
		return byRoute["aborted"] != nil && byRoute["delayed"] != nil
	})
	wantSpanAttrs(t, byRoute["aborted"], map[string]any{"meshd.fault": "abort", "rpc.grpc.status_code": int(codes.Unavailable)})
	wantSpanAttrs(t, byRoute["delayed"], map[string]any{"meshd.fault": "delay", "rpc.grpc.status_code": 0})
}
