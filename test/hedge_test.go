package test

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/tracing"
)

// hedgeConfig is a meshd config with two routes to cluster c (endpoints
// addrs): "hedged" for calls that carry x-hedge: 1, with hedge (delay,
// max_attempts 2) and nothing else, and "plain" for the others.
func hedgeConfig(delay string, addrs ...string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: hedged
    match: {prefix: /, headers: [{name: x-hedge, exact: "1"}]}
    cluster: c
    hedge: {delay: %s, max_attempts: 2}
  - name: plain
    match: {prefix: /}
    cluster: c
clusters:
  - name: c
    endpoints: [%s, %s]
    health: {disabled: true}
    outlier: {consecutive_failures: -1}
    retry_budget: {budget_percent: 1000}
`, delay, addrs[0], addrs[1])
}

// p99 is the 99th percentile of ds (sorted in place).
func p99(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[(len(ds)*99+99)/100-1]
}

// TestHedgeTailLatency: of two backends one answers after 500ms, the other
// at once. With hedge.delay 20ms a call whose first attempt went to the
// slow backend is answered by the fast one (the hedged attempt wins); the
// client's p99 over 500 calls, measured interleaved with 500 calls on a
// route without hedging (whose p99 is the slow backend's), is the figure
// this logs, not an assertion: speed goals are not timed tests on a shared
// machine. No call of either route fails; at most max_attempts (2)
// attempts of a call reach the backends (counted per x-call-id); the
// attempts that lost are cancelled at the slow backend.
func TestHedgeTailLatency(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "hedge", 2)
	slow, fast := bs[0], bs[1]
	slow.SetDelay(500 * time.Millisecond)
	o := startObserved(t, hedgeConfig("20ms", slow.Addr, fast.Addr))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))

	const calls, workers = 500, 25 // per route; unhedged ≈ 250 calls × 500ms / 25 workers
	var (
		mu             sync.Mutex
		hedged, plain  []time.Duration
		firstErr       error
		failures       int
		wg             sync.WaitGroup
		hedgedIDs      []string
		hedgedTook     = map[string]time.Duration{}
		hedgedBy       = map[string]string{} // call id → the backend that answered
		hedgedSlowSeen int
		slowWon        int
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				// Interleaved: each worker alternates the two routes.
				for _, h := range []string{"1", "0"} {
					id := h + "-" + strconv.Itoa(i)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					ctx = metadata.AppendToOutgoingContext(ctx, "x-hedge", h, "x-call-id", id)
					start := time.Now()
					resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hedge me")}})
					took := time.Since(start)
					cancel()
					mu.Lock()
					if err != nil {
						failures++
						if firstErr == nil {
							firstErr = err
						}
					}
					if h == "1" {
						hedged = append(hedged, took)
						hedgedIDs = append(hedgedIDs, id)
						hedgedTook[id] = took
						hedgedBy[id] = resp.GetServerId()
					} else {
						plain = append(plain, took)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if failures > 0 {
		t.Fatalf("%d calls failed, first: %v", failures, firstErr)
	}
	hp, pp := p99(hedged), p99(plain)
	t.Logf("client p99 over %d calls each, interleaved: hedged (delay 20ms) %v, without hedging %v (%.1fx)", calls, hp, pp, float64(pp)/float64(hp))
	slowIDs, fastIDs := slow.CallIDs(), fast.CallIDs()
	for _, id := range hedgedIDs {
		n := slowIDs[id] + fastIDs[id]
		if n < 1 || n > 2 {
			t.Errorf("call %s: %d attempts reached the backends, want 1..2 (max_attempts)", id, n)
		}
		if slowIDs[id] > 0 {
			hedgedSlowSeen++
			if hedgedBy[id] == slow.Name {
				slowWon++ // the fast attempt was slower still (a very busy machine)
			}
		}
	}
	// Every hedged call the slow backend saw lost to the fast one and was
	// cancelled there (the plain route's slow calls run to the end), but
	// those the slow attempt won.
	if !testkit.Poll(10*time.Second, 0, func() bool { return slow.Cancelled() >= int64(hedgedSlowSeen-slowWon) }) {
		var notCancelled []string
		for _, id := range hedgedIDs {
			if slowIDs[id] > 0 {
				notCancelled = append(notCancelled, fmt.Sprintf("%s:%v/%d+%d", id, hedgedTook[id].Round(time.Millisecond), slowIDs[id], fastIDs[id]))
			}
		}
		t.Errorf("the slow backend saw %d hedged calls (%d of them took 500ms or more) but cancelled %d; calls: %v", hedgedSlowSeen, slowWon, slow.Cancelled(), notCancelled)
	}
	// The slow attempt has a 480ms head start to lose; only a machine
	// stalled for about that long lets it win, and rarely.
	if slowWon*10 > hedgedSlowSeen {
		t.Errorf("the slow backend answered %d of the %d hedged calls that started there, want the hedged attempt on the fast one to win nearly all", slowWon, hedgedSlowSeen)
	} else if slowWon > 0 {
		t.Logf("%d hedged calls were answered by the slow backend (a stalled machine)", slowWon)
	}
	if hedgedSlowSeen == 0 {
		t.Errorf("no hedged call started on the slow backend: round robin should send about half there")
	}
	mfs := scrapeMetrics(t, o.Admin)
	retries := mfs.Value(t, "meshd_upstream_retries_total", map[string]string{"route": "hedged", "cluster": "c"})
	hedges := mfs.Value(t, "meshd_frame_hedged_attempts_total", map[string]string{"listener": "main"})
	t.Logf("hedged calls that met the slow backend: %d; hedged attempts %v, meshd_upstream_retries_total{route=hedged} %v", hedgedSlowSeen, hedges, retries)
	if hedges == 0 || hedges != retries {
		t.Errorf("meshd_frame_hedged_attempts_total = %v, want > 0 and one retry of the budget each (%v)", hedges, retries)
	}
}

// TestHedgeFatalStatus: a status the route does not retry (here
// INVALID_ARGUMENT, hedge alone retrying UNAVAILABLE only) from either
// attempt ends the call with it and cancels the other (gRFC A6). One
// backend fails after 200ms, the other would answer after 2s: whichever
// round robin sends the first attempt to, the fatal status comes from the
// first attempt or from the hedged one, and the slow backend's attempt is
// cancelled each time.
func TestHedgeFatalStatus(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "hedge-fatal", 2)
	failing, slow := bs[0], bs[1]
	failing.SetDelay(200 * time.Millisecond)
	failing.FailAll(codes.InvalidArgument)
	slow.SetDelay(2 * time.Second)
	o := startObserved(t, hedgeConfig("20ms", failing.Addr, slow.Addr))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	const calls = 4 // both orders, twice
	for i := range calls {
		start := time.Now()
		_, err := client.UnaryCall(ctxMD(t, "x-hedge", "1"), &testpb.SimpleRequest{})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("call %d: %v, want the failing backend's InvalidArgument", i, err)
		}
		t.Logf("call %d ended after %v", i, time.Since(start).Round(time.Millisecond))
	}
	testkit.WaitFor(t, 10*time.Second, "the slow backend's attempts cancelled", func() bool {
		return slow.Cancelled() == calls
	})
	if failing.Calls() != calls || slow.Calls() != calls {
		t.Errorf("attempts: failing %d, slow %d; want %d each", failing.Calls(), slow.Calls(), calls)
	}
}

// TestHedgeSpans: every attempt of a hedged call is a CLIENT span of the
// caller's trace with its meshd.attempt number; the hedged one carries
// meshd.hedge=true, the first does not; the attempt that lost ends
// CANCELLED and the winner OK.
func TestHedgeSpans(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	bs := startBackends(t, "hedge-span", 2)
	slow, fast := bs[0], bs[1]
	slow.SetDelay(2 * time.Second)
	o := startObserved(t, hedgeConfig("20ms", slow.Addr, fast.Addr),
		tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(10*time.Millisecond))
	client := testpb.NewTestServiceClient(dial(t, o.Addr))
	const calls = 4 // round robin: two start on the slow backend
	for i := range calls {
		ctx := ctxMD(t, "x-hedge", "1", "traceparent", "00-"+obsTraceID(i)+"-"+obsCallerSpan+"-01")
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// A trace is complete with its SERVER span and a CLIENT span per
	// attempt that reached a backend (x-call-id is not sent: count the
	// attempts by the slow backend's calls, each hedged).
	want := calls + int(slow.Calls()) // one per call, one more per call that met the slow backend
	var clients map[string][]*tracepb.Span
	testkit.WaitFor(t, 10*time.Second, "every attempt's CLIENT span", func() bool {
		clients = map[string][]*tracepb.Span{}
		n := 0
		for _, s := range recv.Spans() {
			if s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT {
				id := hex.EncodeToString(s.GetTraceId())
				clients[id] = append(clients[id], s)
				n++
			}
		}
		return n >= want
	})
	hedgedTraces := 0
	for tid, spans := range clients {
		if len(spans) == 1 {
			if spanAttr(spans[0], "meshd.hedge") != nil || intAttr(spans[0], "meshd.attempt") != 1 {
				t.Errorf("trace %s: lone CLIENT span %v, want attempt 1 without meshd.hedge", tid, spans[0].GetAttributes())
			}
			continue
		}
		if len(spans) != 2 {
			t.Fatalf("trace %s: %d CLIENT spans, want 1 or 2", tid, len(spans))
		}
		hedgedTraces++
		slices.SortFunc(spans, func(a, b *tracepb.Span) int { return int(intAttr(a, "meshd.attempt") - intAttr(b, "meshd.attempt")) })
		first, hedged := spans[0], spans[1]
		if intAttr(first, "meshd.attempt") != 1 || spanAttr(first, "meshd.hedge") != nil {
			t.Errorf("trace %s: first attempt's span %v, want attempt 1 without meshd.hedge", tid, first.GetAttributes())
		}
		if intAttr(hedged, "meshd.attempt") != 2 || !spanAttr(hedged, "meshd.hedge").GetBoolValue() {
			t.Errorf("trace %s: hedged attempt's span %v, want attempt 2, meshd.hedge=true", tid, hedged.GetAttributes())
		}
		ended := map[int64]bool{intAttr(first, "rpc.grpc.status_code"): true, intAttr(hedged, "rpc.grpc.status_code"): true}
		if !ended[0] || !ended[1] {
			t.Errorf("trace %s: attempts ended with status codes %v, want OK (the winner) and CANCELLED (the loser)", tid, ended)
		}
	}
	if hedgedTraces != int(slow.Calls()) || hedgedTraces == 0 {
		t.Errorf("%d traces with a hedged attempt, want one per call that met the slow backend (%d)", hedgedTraces, slow.Calls())
	}
}
