package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// meshYAML is a config with the given routes and clusters sections (YAML
// list items, already indented by two spaces) and extra top-level lines.
func meshYAML(routes, clusters, top string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
%s
routes:
%s
clusters:
%s
`, top, routes, clusters)
}

// noOutlier keeps failing backends in rotation, so a test sees every
// attempt reach them rather than meshd ejecting them.
const noOutlier = "    outlier: {consecutive_failures: -1}\n"

// deadlineRecorder is a unary interceptor that records, per x-case header,
// how much time the backend's context had left when the call arrived
// (-1: no deadline).
type deadlineRecorder struct {
	mu   sync.Mutex
	left map[string]time.Duration
}

func (d *deadlineRecorder) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	d.mu.Lock()
	d.left[strings.Join(md.Get("x-case"), "")] = left
	d.mu.Unlock()
	return h(ctx, req)
}

func (d *deadlineRecorder) get(c string) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.left[c]
	return v, ok
}

// TestTimeouts checks the effective deadline is the tighter of the
// client's, the route's timeout and max_grpc_timeout's cap, that the
// backend gets it, and that a timeout meshd enforces is DEADLINE_EXCEEDED.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	rec := &deadlineRecorder{left: map[string]time.Duration{}}
	bs := startBackends(t, "to", 1, backend.WithServerOptions(grpc.UnaryInterceptor(rec.intercept)))
	route := func(name, extra string) string {
		return fmt.Sprintf("  - name: %s\n    match: {prefix: /, headers: [{name: x-case, exact: %s}]}\n    cluster: c\n%s", name, name, extra)
	}
	m := startMesh(t, meshYAML(
		route("route-tighter", "    timeout: 300ms\n")+
			route("client-tighter", "    timeout: 10s\n")+
			route("cap-tighter", "    max_grpc_timeout: 300ms\n")+
			route("cap-no-client-deadline", "    max_grpc_timeout: 300ms\n")+
			route("cap-looser", "    max_grpc_timeout: 10s\n")+
			"  - name: default\n    match: {prefix: /}\n    cluster: c\n",
		"  - name: c\n    endpoints: "+addrs(bs)+"\n", ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	tests := []struct {
		name     string
		client   time.Duration // 0: no client deadline
		wantMax  time.Duration // the backend must see at most this left (-1: no deadline)
		delay    bool          // the backend is slow: the call must end DEADLINE_EXCEEDED
		wantText string        // in meshd's status message, when meshd enforced it
	}{
		{"route-tighter", 10 * time.Second, 300 * time.Millisecond, true, "route timeout 300ms"},
		{"client-tighter", 300 * time.Millisecond, 300 * time.Millisecond, true, ""},
		{"cap-tighter", 10 * time.Second, 300 * time.Millisecond, true, "max_grpc_timeout 300ms"},
		{"cap-no-client-deadline", 0, -1, false, ""},
		{"cap-looser", 300 * time.Millisecond, 300 * time.Millisecond, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-case", tc.name)
			if tc.delay {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-delay", "20s")
			}
			if tc.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.client)
				defer cancel()
			}
			start := time.Now()
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			took := time.Since(start)
			left, ok := rec.get(tc.name)
			if !ok {
				t.Fatalf("the call did not reach the backend: %v", err)
			}
			switch {
			case tc.wantMax < 0 && left != -1:
				t.Errorf("backend saw a deadline %v away, want none", left)
			case tc.wantMax > 0 && (left < 0 || left > tc.wantMax):
				t.Errorf("backend saw %v left, want at most %v", left, tc.wantMax)
			}
			if !tc.delay {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				return
			}
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
			}
			if took > 3*time.Second {
				t.Errorf("DEADLINE_EXCEEDED after %v; the deadline was 300ms", took)
			}
			msg := status.Convert(err).Message()
			if tc.wantText != "" && !strings.Contains(msg, tc.wantText) {
				t.Errorf("message %q does not name %q", msg, tc.wantText)
			}
			if tc.wantText == "" && (strings.Contains(msg, "route timeout") || strings.Contains(msg, "max_grpc_timeout")) {
				t.Errorf("message %q names a meshd setting; the client's deadline fired", msg)
			}
		})
	}
}

// TestStreamTimeouts: no default cuts a long-lived stream; a route's
// idle_timeout cuts an idle one with DEADLINE_EXCEEDED, never an active
// one.
func TestStreamTimeouts(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "st", 1)
	m := startMesh(t, meshYAML(`  - name: idle
    match: {prefix: /, headers: [{name: x-route, exact: idle}]}
    cluster: c
    idle_timeout: 1s
  - name: plain
    match: {prefix: /}
    cluster: c
`, "  - name: c\n    endpoints: "+addrs(bs)+"\n", ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	// active sends a message every 100ms for d and checks each answer.
	active := func(t *testing.T, st testpb.TestService_FullDuplexCallClient, d time.Duration) {
		t.Helper()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(d); time.Now().Before(end); {
			<-tick.C
			if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 8}}}); err != nil {
				t.Fatalf("send: %v", err)
			}
			if _, err := st.Recv(); err != nil {
				t.Fatalf("stream cut while active: %v", err)
			}
		}
	}
	t.Run("no route timeout: 3s active, then 1.5s idle, then active", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		active(t, st, 3*time.Second)
		// Idle longer than the other route's idle_timeout (meshd has no
		// default one); the stream must survive.
		idle := time.NewTimer(1500 * time.Millisecond)
		<-idle.C
		active(t, st, 300*time.Millisecond)
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
	})
	t.Run("idle_timeout 1s: 3s active survives, then idle is cut", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "x-route", "idle"))
		defer cancel()
		st, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		active(t, st, 3*time.Second)
		start := time.Now()
		_, err = st.Recv()
		took := time.Since(start)
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "idle_timeout 1s") {
			t.Fatalf("idle stream ended with %v, want DEADLINE_EXCEEDED naming idle_timeout", err)
		}
		if took < 800*time.Millisecond || took > 5*time.Second {
			t.Errorf("cut after %v idle, want about 1s", took)
		}
	})
}

// failoverMesh is two backends, the first failing every call, behind a
// route that retries: name-0 fails, name-1 answers. Calls must carry
// x-trailers-only so the failure is trailers-only (grpc-go sends a header
// frame first when a handler set header metadata, which commits the call).
func failoverMesh(t *testing.T, name, retry string) (*mesh, []*backend.Backend, testpb.TestServiceClient) {
	t.Helper()
	bs := startBackends(t, name, 2)
	m := startMesh(t, meshYAML(`  - name: r
    match: {prefix: /}
    cluster: c
`+retry, "  - name: c\n    endpoints: "+addrs(bs)+"\n"+noOutlier+
		// Every call may retry once: this test is not about the budget.
		"    retry_budget: {budget_percent: 100}\n", ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	waitHealthy(t, m.Admin, "c", 2)
	bs[0].FailAll(codes.Unavailable)
	return m, bs, testpb.NewTestServiceClient(cc)
}

// TestRetryGoesToAnotherBackend: an attempt that fails UNAVAILABLE before
// committing is retried on the other backend, with its messages and
// half-close replayed, and the backend learns the attempt count.
func TestRetryGoesToAnotherBackend(t *testing.T) {
	t.Parallel()
	_, bs, client := failoverMesh(t, "rt", `    retry: {attempts: 2, backoff: {base_interval: 1ms}}
`)
	ctx := ctxMD(t, "x-trailers-only", "1")
	t.Run("unary", func(t *testing.T) {
		retried := 0
		for i := range 20 {
			before := bs[0].Calls()
			resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if resp.GetServerId() != "rt-1" {
				t.Fatalf("call %d answered by %q", i, resp.GetServerId())
			}
			prev := bs[1].LastMetadata().Get("grpc-previous-rpc-attempts")
			if bs[0].Calls() > before {
				retried++
				if len(prev) != 1 || prev[0] != "1" {
					t.Fatalf("retried call %d: grpc-previous-rpc-attempts = %v, want [1]", i, prev)
				}
			} else if len(prev) != 0 {
				t.Fatalf("first-attempt call %d carries grpc-previous-rpc-attempts %v", i, prev)
			}
		}
		// Round robin alternates, so about half the calls try rt-0 first.
		if retried < 5 {
			t.Fatalf("only %d of 20 calls went to the failing backend first", retried)
		}
		t.Logf("%d of 20 calls failed over from rt-0 to rt-1; all OK", retried)
	})
	t.Run("client stream replayed with its half-close", func(t *testing.T) {
		for i := range 6 {
			st, err := client.StreamingInputCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for j := 1; j <= 5; j++ {
				want += j * 10
				if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, j*10)}}); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := st.CloseAndRecv()
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			if int(resp.GetAggregatedPayloadSize()) != want {
				t.Fatalf("stream %d: backend summed %d bytes, want %d", i, resp.GetAggregatedPayloadSize(), want)
			}
		}
	})
	t.Run("bidi replayed then live", func(t *testing.T) {
		for i := range 6 {
			st, err := client.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for j := 1; j <= 3; j++ {
				if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(j)}}}); err != nil {
					t.Fatal(err)
				}
				m, err := st.Recv()
				if err != nil || len(m.GetPayload().GetBody()) != j {
					t.Fatalf("stream %d message %d: %v", i, j, err)
				}
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Recv(); err != io.EOF {
				t.Fatalf("stream %d end: %v", i, err)
			}
		}
	})
}

// TestPerTryTimeout: an attempt cut by per_try_timeout is retried
// elsewhere; when every attempt is cut the call is DEADLINE_EXCEEDED.
func TestPerTryTimeout(t *testing.T) {
	t.Parallel()
	slowIntercept := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		tm := time.NewTimer(10 * time.Second)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return h(ctx, req)
	}
	slow := startBackends(t, "slow", 1, backend.WithServerOptions(grpc.UnaryInterceptor(slowIntercept)))
	fast := startBackends(t, "fast", 1)
	both := append(append([]*backend.Backend{}, slow...), fast...)
	m := startMesh(t, meshYAML(`  - name: slow
    match: {prefix: /, headers: [{name: x-route, exact: slow}]}
    cluster: slow
    retry: {attempts: 2, per_try_timeout: 500ms, backoff: {base_interval: 1ms}}
  - name: mixed
    match: {prefix: /}
    cluster: mixed
    retry: {attempts: 2, per_try_timeout: 500ms, backoff: {base_interval: 1ms}}
`, "  - name: mixed\n    endpoints: "+addrs(both)+"\n"+noOutlier+"  - name: slow\n    endpoints: "+addrs(slow)+"\n"+noOutlier, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	waitHealthy(t, m.Admin, "mixed", 2)
	client := testpb.NewTestServiceClient(cc)

	for i := range 4 {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var hdr metadata.MD
		_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{}, grpc.Header(&hdr))
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got := hdr.Get("x-backend"); len(got) != 1 || got[0] != "fast-0" {
			t.Fatalf("call %d answered by %v", i, got)
		}
	}

	cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-route", "slow"), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
	took := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "per_try_timeout 500ms") {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED naming per_try_timeout", err)
	}
	if took < time.Second || took > 6*time.Second {
		t.Errorf("two 500ms attempts took %v", took)
	}
}

// TestRetryNotStartedPastDeadline: an attempt that would not fit in the
// remaining deadline is not started; the client gets the last failure at
// once instead of a doomed attempt.
func TestRetryNotStartedPastDeadline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		deadline  time.Duration
		wantCalls int64
	}{
		// Attempt 1 fails after 300ms; 200ms are left, less than it took.
		{"no room", 500 * time.Millisecond, 1},
		// Room for all three attempts.
		{"room", 10 * time.Second, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bs := startBackends(t, "dl", 2)
			m := startMesh(t, meshYAML(`  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 3, backoff: {base_interval: 1ms}}
`, "  - name: c\n    endpoints: "+addrs(bs)+"\n"+noOutlier, ""))
			cc := dial(t, m.Addr)
			waitServing(t, cc)
			base := bs[0].Calls() + bs[1].Calls()
			ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-fail", "UNAVAILABLE", "x-delay", "300ms", "x-trailers-only", "1"), tc.deadline)
			defer cancel()
			start := time.Now()
			_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
			took := time.Since(start)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("err = %v, want the backend's UNAVAILABLE", err)
			}
			if got := bs[0].Calls() + bs[1].Calls() - base; got != tc.wantCalls {
				t.Fatalf("backends saw %d attempts, want %d", got, tc.wantCalls)
			}
			if took >= tc.deadline {
				t.Errorf("answered after %v, at or past the %v deadline", took, tc.deadline)
			}
		})
	}
}

// TestCommittedCallNotRetried: once a response message reached the
// client, a failure is final (response HEADERS alone do not commit a call
// on a route with retry: TestRetryAfterHeaders).
func TestCommittedCallNotRetried(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "cm", 2)
	m := startMesh(t, meshYAML(`  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 3, backoff: {base_interval: 1ms}}
`, "  - name: c\n    endpoints: "+addrs(bs)+"\n"+noOutlier, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	base := bs[0].Calls() + bs[1].Calls()
	ctx := ctxMD(t, "x-header-first", "1")
	st, err := testpb.NewTestServiceClient(cc).StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1}},
		ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.Unavailable), Message: "after a message"},
	})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := st.Header()
	if err != nil || len(hdr.Get("x-backend")) != 1 {
		t.Fatalf("headers %v err %v", hdr, err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("Recv: %v, want the message", err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if got := bs[0].Calls() + bs[1].Calls() - base; got != 1 {
		t.Fatalf("a committed call made %d attempts, want 1", got)
	}
	// The same failure, trailers-only, is retried (3 attempts).
	_, err = testpb.NewTestServiceClient(cc).UnaryCall(ctxMD(t, "x-fail", "UNAVAILABLE", "x-trailers-only", "1"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v", err)
	}
	if got := bs[0].Calls() + bs[1].Calls() - base; got != 1+3 {
		t.Fatalf("an uncommitted trailers-only failure made %d attempts, want 3", got-1)
	}
}

// TestRetryBufferLimit: a call that sends more than the per-call or the
// process-wide retry buffer commits and is not retried.
func TestRetryBufferLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		perCall   int
		process   int
		msgSize   int
		wantCalls int64
	}{
		{"under both limits", 1024, 1 << 20, 100, 2},
		{"over the per-call limit", 1024, 1 << 20, 1000, 1},
		{"over the process-wide limit", 1 << 20, 1024, 1000, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// One backend: the retry goes back to it, so its call count
			// is the attempt count.
			bs := startBackends(t, "buf", 1)
			m := startMesh(t, meshYAML(fmt.Sprintf(`  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 2, max_buffer_bytes: %d, backoff: {base_interval: 1ms}}
`, tc.perCall), "  - name: c\n    endpoints: "+addrs(bs)+"\n"+noOutlier, fmt.Sprintf("max_retry_buffer_bytes: %d", tc.process)))
			cc := dial(t, m.Addr)
			waitServing(t, cc)
			base := bs[0].Calls()
			// The backend fails only after 300ms, by which time the three
			// messages have crossed meshd.
			st, err := testpb.NewTestServiceClient(cc).StreamingInputCall(ctxMD(t, "x-fail", "UNAVAILABLE", "x-delay", "300ms", "x-trailers-only", "1"))
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, tc.msgSize)}}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := st.CloseAndRecv(); status.Code(err) != codes.Unavailable {
				t.Fatalf("err = %v, want UNAVAILABLE", err)
			}
			if got := bs[0].Calls() - base; got != tc.wantCalls {
				t.Fatalf("%d attempts, want %d", got, tc.wantCalls)
			}
		})
	}
}

// TestRetryBudgetCapsStorm: under a cluster that fails every call, the
// retry budget holds retries to about budget_percent of the calls, where
// retry.attempts alone would triple the load.
func TestRetryBudgetCapsStorm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		budget       string
		calls        int64
		maxPerCall   float64
		minPerCall   float64
		wantDescribe string
	}{
		{"budget 20% + 5/s", "{budget_percent: 20, min_retries_per_second: 5}", 400, 1.45, 1.0, "capped"},
		{"budget out of the way", "{budget_percent: 1000, min_retries_per_second: 0}", 150, 3.0, 3.0, "uncapped"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bs := startBackends(t, "storm", 2)
			m := startMesh(t, meshYAML(`  - name: r
    match: {prefix: /}
    cluster: c
    retry: {attempts: 3, backoff: {base_interval: 1ms, max_interval: 2ms}}
`, "  - name: c\n    endpoints: "+addrs(bs)+"\n"+noOutlier+"    retry_budget: "+tc.budget+"\n", ""))
			cc := dial(t, m.Addr)
			waitServing(t, cc)
			for _, b := range bs {
				b.FailAll(codes.Unavailable)
			}
			base := bs[0].Calls() + bs[1].Calls()
			client := testpb.NewTestServiceClient(cc)
			md := metadata.Pairs("x-trailers-only", "1")
			calls, workers := tc.calls, 8
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Int64
			start := time.Now()
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= calls {
						ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 10*time.Second)
						if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) == codes.Unavailable {
							failed.Add(1)
						}
						cancel()
					}
				}()
			}
			wg.Wait()
			took := time.Since(start)
			attempts := bs[0].Calls() + bs[1].Calls() - base
			perCall := float64(attempts) / float64(calls)
			t.Logf("%s: %d calls in %v, %d attempts: %.2f attempts per call (retry.attempts 3)", tc.wantDescribe, calls, took.Round(time.Millisecond), attempts, perCall)
			if failed.Load() != calls {
				t.Errorf("%d of %d calls failed UNAVAILABLE, want all", failed.Load(), calls)
			}
			if perCall > tc.maxPerCall || perCall < tc.minPerCall {
				t.Fatalf("%.2f attempts per call, want between %.2f and %.2f", perCall, tc.minPerCall, tc.maxPerCall)
			}
		})
	}
}

// waitHealthy waits until n endpoints of cluster are serving, so that a
// retry has somewhere else to go (waitServing proves only one).
func waitHealthy(t *testing.T, admin, cluster string, n int) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("%d healthy endpoints in %s", n, cluster), func() bool {
		_, body := adminGet(t, admin, "/clusters")
		var v map[string]struct {
			Status struct{ Healthy int } `json:"status"`
		}
		return json.Unmarshal([]byte(body), &v) == nil && v[cluster].Status.Healthy >= n
	})
}

// clusterLimits reads a cluster's limit counters from /clusters.
func clusterLimits(t *testing.T, admin, cluster string) (active, pending int64) {
	t.Helper()
	_, body := adminGet(t, admin, "/clusters")
	var v map[string]struct {
		Limits struct {
			Active  int64 `json:"active"`
			Pending int64 `json:"pending"`
		} `json:"limits"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/clusters: %v\n%s", err, body)
	}
	return v[cluster].Limits.Active, v[cluster].Limits.Pending
}

// TestConcurrencyLimits: over max_requests or max_pending meshd answers
// RESOURCE_EXHAUSTED at once instead of queueing.
func TestConcurrencyLimits(t *testing.T) {
	t.Parallel()
	t.Run("max_requests", func(t *testing.T) {
		t.Parallel()
		bs := startBackends(t, "mr", 1)
		m := startMesh(t, meshYAML("  - name: r\n    match: {prefix: /}\n    cluster: c\n",
			"  - name: c\n    endpoints: "+addrs(bs)+"\n    max_requests: 2\n", ""))
		cc := dial(t, m.Addr)
		waitServing(t, cc)
		client := testpb.NewTestServiceClient(cc)
		ctx, cancel := context.WithCancel(context.Background())
		var streams []testpb.TestService_FullDuplexCallClient
		for range 2 {
			streams = append(streams, testkit.OpenStream(t, ctx, client))
		}
		start := time.Now()
		_, err := client.EmptyCall(ctxMD(t), &testpb.Empty{})
		took := time.Since(start)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "max_requests") {
			t.Fatalf("third call: %v, want RESOURCE_EXHAUSTED naming max_requests", err)
		}
		if took > time.Second {
			t.Errorf("refusal took %v; it must be immediate", took)
		}
		t.Logf("refused in %v", took)
		cancel()
		for _, st := range streams {
			st.Recv() // the cancel ends them
		}
		testkit.WaitFor(t, 5*time.Second, "calls admitted again", func() bool {
			_, err := client.EmptyCall(ctxMD(t), &testpb.Empty{})
			return err == nil
		})
	})
	t.Run("max_pending", func(t *testing.T) {
		t.Parallel()
		testMaxPending(t)
	})
}

// testMaxPending: meshd's upstream pool does not make a call wait for a
// stream slot on a full connection but dials another (it keeps two per
// backend, more while all are at the backend's MAX_CONCURRENT_STREAMS): the
// call is pending while that dial is in progress. The backend's SETTINGS on
// the new connection are held back (settingsGate), so the wait lasts until
// the test ends it.
func testMaxPending(t *testing.T) {
	bs := startBackends(t, "mpf", 1, backend.WithHealth(backend.HealthNone), backend.WithServerOptions(grpc.MaxConcurrentStreams(1)))
	gate := startSettingsGate(t, bs[0].Addr, 2)
	m := startMesh(t, meshYAML("  - name: r\n    match: {prefix: /}\n    cluster: c\n",
		"  - name: c\n    endpoints: ["+gate.Addr()+"]\n    health: {disabled: true}\n    max_pending: 1\n", ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Two streams open: both connections the gate lets through are full.
	var streams []testpb.TestService_FullDuplexCallClient
	for range 2 {
		streams = append(streams, testkit.OpenStream(t, ctx, client))
	}
	if _, pending := clusterLimits(t, m.Admin, "c"); pending != 0 {
		t.Fatalf("pending = %d with every call linked; want 0", pending)
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		waiting <- err
	}()
	testkit.WaitFor(t, 5*time.Second, "the call to wait for a new connection", func() bool {
		_, pending := clusterLimits(t, m.Admin, "c")
		return pending == 1
	})
	start := time.Now()
	_, err := client.EmptyCall(ctxMD(t), &testpb.Empty{})
	took := time.Since(start)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "max_pending") {
		t.Fatalf("call over max_pending: %v, want RESOURCE_EXHAUSTED naming max_pending", err)
	}
	if took > time.Second {
		t.Errorf("refusal took %v; it must be immediate", took)
	}
	// The new connection comes up: the waiting call gets its stream.
	gate.Open()
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("the pending call failed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pending call never got its stream")
	}
	if _, pending := clusterLimits(t, m.Admin, "c"); pending != 0 {
		t.Fatalf("pending = %d after the wait ended; want 0", pending)
	}
	for _, st := range streams {
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("stream: %v", err)
		}
	}
}

// settingsGate is a TCP front for a backend: it lets the first free
// connections through, and on later ones holds back the backend's bytes
// (its HTTP/2 SETTINGS first) until Open, so that a dial of them stays in
// progress, deterministically.
type settingsGate struct {
	lis     net.Listener
	backend string
	free    int
	open    chan struct{}
	once    sync.Once
	done    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	stopped bool
}

func startSettingsGate(t testing.TB, backendAddr string, free int) *settingsGate {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &settingsGate{lis: lis, backend: backendAddr, free: free, open: make(chan struct{}), done: make(chan struct{})}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for n := 0; ; n++ {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			g.serve(c, n >= free)
		}
	}()
	t.Cleanup(g.stop)
	return g
}

func (g *settingsGate) serve(c net.Conn, gated bool) {
	up, err := net.Dial("tcp", g.backend)
	g.mu.Lock()
	if err != nil || g.stopped {
		g.mu.Unlock()
		_ = c.Close()
		if up != nil {
			_ = up.Close()
		}
		return
	}
	g.conns = append(g.conns, c, up)
	g.mu.Unlock()
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		_, _ = io.Copy(up, c)
		_ = up.Close()
	}()
	go func() {
		defer g.wg.Done()
		if gated {
			select {
			case <-g.open:
			case <-g.done:
				return
			}
		}
		_, _ = io.Copy(c, up)
		_ = c.Close()
	}()
}

func (g *settingsGate) Addr() string { return g.lis.Addr().String() }

// Open lets the held connections through.
func (g *settingsGate) Open() { g.once.Do(func() { close(g.open) }) }

// stop closes the listener and every connection and waits.
func (g *settingsGate) stop() {
	_ = g.lis.Close()
	close(g.done)
	g.mu.Lock()
	g.stopped = true
	for _, c := range g.conns {
		_ = c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// TestRateLimit: a route's token bucket answers RESOURCE_EXHAUSTED past
// its burst.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "rl", 1)
	m := startMesh(t, meshYAML(`  - name: limited
    match: {prefix: /, headers: [{name: x-route, exact: limited}]}
    cluster: c
    rate_limit: {requests_per_second: 0.1, burst: 2}
  - name: free
    match: {prefix: /}
    cluster: c
`, "  - name: c\n    endpoints: "+addrs(bs)+"\n", ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	var codesSeen []codes.Code
	for range 3 {
		_, err := client.EmptyCall(ctxMD(t, "x-route", "limited"), &testpb.Empty{})
		codesSeen = append(codesSeen, status.Code(err))
		if err != nil && !strings.Contains(status.Convert(err).Message(), "rate limit") {
			t.Errorf("message %q does not say rate limit", status.Convert(err).Message())
		}
	}
	if codesSeen[0] != codes.OK || codesSeen[1] != codes.OK || codesSeen[2] != codes.ResourceExhausted {
		t.Fatalf("codes %v, want OK OK RESOURCE_EXHAUSTED", codesSeen)
	}
	if _, err := client.EmptyCall(ctxMD(t), &testpb.Empty{}); err != nil {
		t.Fatalf("another route was limited too: %v", err)
	}
}

// TestTransparentRetryNotReached: a call whose stream could not be opened
// (connection refused) never reached a backend, so it goes to another
// endpoint even on a route without a retry policy, with its messages.
func TestTransparentRetryNotReached(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "nr", 2)
	// No health watching and no outlier detection: meshd keeps picking
	// the dead backend, and only the transparent retry saves the calls.
	m := startMesh(t, meshYAML("  - name: r\n    match: {prefix: /}\n    cluster: c\n",
		"  - name: c\n    endpoints: "+addrs(bs)+"\n    health: {disabled: true}\n"+noOutlier, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	bs[0].Stop()
	for i := range 10 {
		resp, err := client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{})
		if err != nil {
			t.Fatalf("unary %d: %v", i, err)
		}
		if resp.GetServerId() != "nr-1" {
			t.Fatalf("unary %d answered by %q", i, resp.GetServerId())
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
}
