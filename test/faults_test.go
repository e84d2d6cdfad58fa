package test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
	"github.com/meshd/meshd/test/backend"
)

// Broken backends: each is a real TCP server on loopback that misbehaves
// in one way. meshd must answer every call by its deadline (or its route
// timeout) with the right code, and eject the backend where its health or
// outlier rules say so.

// faultSlack is how late past a timeout an answer may come on a shared
// 2-core machine.
const faultSlack = time.Second

// startH2Backend is a hand-written HTTP/2 server (h2raw) that answers PING
// and hands each request's HEADERS to onHeaders, which decides the
// misbehaviour. requests counts the HEADERS it got.
func startH2Backend(t testing.TB, requests *atomic.Int64, onHeaders func(sc *h2raw.ServerConn, id uint32) error) string {
	t.Helper()
	return h2raw.StartBackend(t, func(sc *h2raw.ServerConn, f http2.Frame) error {
		switch f := f.(type) {
		case *http2.PingFrame:
			if !f.IsAck() {
				return sc.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if requests != nil {
				requests.Add(1)
			}
			return onHeaders(sc, f.StreamID)
		}
		return nil
	}).Addr()
}

// faultConfig routes /grpc.testing.TestService/UnaryCall without a route
// timeout (the client's deadline bounds it) and everything else with
// timeout, to one cluster of the given endpoints and extra cluster
// settings.
func faultConfig(endpoints []string, timeout time.Duration, cluster string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 2s
routes:
  - {name: unary, match: {method: /grpc.testing.TestService/UnaryCall}, cluster: broken}
  - {name: rest, match: {prefix: /}, cluster: broken, timeout: %s}
clusters:
  - name: broken
    endpoints: [%s]
%s`, timeout, joinComma(endpoints), cluster)
}

func joinComma(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(x)
	}
	return b.String()
}

// timedCall runs f with a client deadline and returns its code and how
// long it took.
func timedCall(deadline time.Duration, f func(ctx context.Context) error) (codes.Code, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	return status.Code(err), time.Since(start), err
}

// wantAnswer checks a call's code and that it came between lo and
// hi+faultSlack.
func wantAnswer(t *testing.T, what string, got codes.Code, took time.Duration, err error, want []codes.Code, lo, hi time.Duration) {
	t.Helper()
	ok := false
	for _, w := range want {
		ok = ok || got == w
	}
	if !ok {
		t.Errorf("%s: %v after %s; want one of %v", what, err, took, want)
	}
	if took < lo || took > hi+faultSlack {
		t.Errorf("%s: answered after %s; want between %s and %s", what, took, lo, hi+faultSlack)
	}
	t.Logf("%s: %s after %s (%v)", what, got, took.Round(time.Millisecond), err)
}

func endpointState(m *mesh, cluster, addr string) string {
	for _, cs := range m.srv.ClusterStatuses() {
		if cs.Name != cluster {
			continue
		}
		for _, e := range cs.Endpoints {
			if e.Address == addr {
				return e.State
			}
		}
	}
	return ""
}

// TestFaultBlackHole: a backend that accepts TCP and never speaks HTTP/2.
// A call is answered DEADLINE_EXCEEDED at the route timeout or at the
// client's deadline, and, with health checking on, the black hole never
// takes a call: it never reports SERVING.
func TestFaultBlackHole(t *testing.T) {
	t.Parallel()
	bh := testkit.BlackHole(t)
	t.Run("health disabled: calls reach it", func(t *testing.T) {
		const timeout = 300 * time.Millisecond
		m := startMesh(t, faultConfig([]string{bh.Addr()}, timeout, "    health: {disabled: true}"))
		client := testpb.NewTestServiceClient(dial(t, m.Addr))
		code, took, err := timedCall(10*time.Second, func(ctx context.Context) error {
			_, err := client.EmptyCall(ctx, &testpb.Empty{})
			return err
		})
		wantAnswer(t, "route timeout", code, took, err, []codes.Code{codes.DeadlineExceeded}, timeout, timeout)
		const deadline = 400 * time.Millisecond
		code, took, err = timedCall(deadline, func(ctx context.Context) error {
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		})
		wantAnswer(t, "client deadline, no route timeout", code, took, err, []codes.Code{codes.DeadlineExceeded}, deadline, deadline)
	})
	t.Run("health on: never admitted", func(t *testing.T) {
		good := startBackends(t, "good", 1)
		m := startMesh(t, faultConfig([]string{bh.Addr(), good[0].Addr}, 2*time.Second, ""))
		cc := dial(t, m.Addr)
		waitServing(t, cc)
		client := testpb.NewTestServiceClient(cc)
		for i := range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := client.EmptyCall(ctx, &testpb.Empty{})
			cancel()
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		// Pending until its first connect attempt times out, then ejected
		// as unreachable: never serving.
		if st := endpointState(m, "broken", bh.Addr()); st != balancer.StatePending && st != balancer.StateEjected {
			t.Errorf("black hole state %q, want %q or %q", st, balancer.StatePending, balancer.StateEjected)
		}
	})
}

// TestFaultStallMidStream: a real backend sends one message of a stream,
// then stalls. The route timeout (or its idle_timeout) ends the call with
// DEADLINE_EXCEEDED after the client got the first message, and the
// backend sees the call cancelled.
func TestFaultStallMidStream(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		route string
		bound time.Duration
	}{
		{"route timeout", "timeout: 600ms", 600 * time.Millisecond},
		{"idle timeout", "idle_timeout: 400ms", 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bs := startBackends(t, "stall", 1)
			m := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
routes: [{name: all, match: {prefix: /}, cluster: c, %s}]
clusters: [{name: c, endpoints: [%s]}]
`, tc.route, bs[0].Addr))
			cc := dial(t, m.Addr)
			waitServing(t, cc)
			client := testpb.NewTestServiceClient(cc)
			got := 0
			code, took, err := timedCall(20*time.Second, func(ctx context.Context) error {
				st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
					{Size: 10}, {Size: 10, IntervalUs: int32((30 * time.Second).Microseconds())},
				}})
				if err != nil {
					return err
				}
				for {
					if _, err := st.Recv(); err != nil {
						return err
					}
					got++
				}
			})
			wantAnswer(t, "stalled stream", code, took, err, []codes.Code{codes.DeadlineExceeded}, tc.bound, tc.bound)
			if got != 1 {
				t.Errorf("client got %d messages before the stall was cut, want 1", got)
			}
			testkit.WaitFor(t, 5*time.Second, "the backend to see the call cancelled", func() bool { return bs[0].Cancelled() == 1 })
		})
	}
}

// Misbehaving HTTP/2 backends, answering each request's HEADERS.
var (
	// Bytes that are no valid frame: a HEADERS frame whose block is not
	// HPACK.
	sendGarbage = func(sc *h2raw.ServerConn, id uint32) error {
		return sc.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: bytes.Repeat([]byte{0xff}, 32), EndHeaders: true})
	}
	// A well-formed response that is not gRPC (an HTML error page).
	sendHTML = func(sc *h2raw.ServerConn, id uint32) error {
		block := sc.EncodeHeaders(hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "text/html"})
		if err := sc.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
			return err
		}
		return sc.WriteData(id, true, []byte("<html>oops</html>"))
	}
	resetStream = func(sc *h2raw.ServerConn, id uint32) error {
		return sc.WriteRSTStream(id, http2.ErrCodeInternal)
	}
)

// TestFaultMalformedResponse: backends answering garbage or a non-gRPC
// response. The call fails at once with a status, not at its deadline.
func TestFaultMalformedResponse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		answer func(*h2raw.ServerConn, uint32) error
		want   []codes.Code
	}{
		{"invalid HPACK", sendGarbage, []codes.Code{codes.Unavailable, codes.Internal}},
		{"HTML response", sendHTML, []codes.Code{codes.Unknown, codes.Internal, codes.Unavailable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var requests atomic.Int64
			be := startH2Backend(t, &requests, tc.answer)
			m := startMesh(t, faultConfig([]string{be}, 5*time.Second, "    health: {disabled: true}"))
			client := testpb.NewTestServiceClient(dial(t, m.Addr))
			for i := range 3 {
				code, took, err := timedCall(10*time.Second, func(ctx context.Context) error {
					_, err := client.EmptyCall(ctx, &testpb.Empty{})
					return err
				})
				wantAnswer(t, fmt.Sprintf("call %d", i), code, took, err, tc.want, 0, time.Second)
			}
			if requests.Load() == 0 {
				t.Error("the backend saw no request")
			}
		})
	}
}

// TestFaultResetEveryStream: a backend that resets every stream. Calls
// fail fast with INTERNAL until outlier detection ejects it; from then
// on every call goes to the good backend.
func TestFaultResetEveryStream(t *testing.T) {
	t.Parallel()
	var badRequests atomic.Int64
	bad := startH2Backend(t, &badRequests, resetStream)
	good := startBackends(t, "good", 1, backend.WithHealth(backend.HealthNone))
	m := startMesh(t, faultConfig([]string{bad, good[0].Addr}, 5*time.Second, `    health: {disabled: true}
    outlier: {consecutive_failures: 3, failure_codes: [INTERNAL], base_ejection_time: 30s, max_ejection_percent: 50}`))
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	failed := 0
	for i := range 40 {
		code, took, err := timedCall(10*time.Second, func(ctx context.Context) error {
			_, err := client.EmptyCall(ctx, &testpb.Empty{})
			return err
		})
		if took > time.Second {
			t.Errorf("call %d took %s", i, took)
		}
		switch {
		case err == nil:
		case code == codes.Internal && i < 20:
			failed++
		default:
			t.Errorf("call %d: %v", i, err)
		}
	}
	if failed == 0 || failed > 3 {
		t.Errorf("%d calls failed before the ejection; want 1-3 (consecutive_failures 3, every other call goes to it)", failed)
	}
	if st := endpointState(m, "broken", bad); st != balancer.StateEjected {
		t.Errorf("resetting backend state %q, want %q", st, balancer.StateEjected)
	}
	t.Logf("%d of 40 calls failed (INTERNAL) before the resetting backend was ejected; it saw %d requests", failed, badRequests.Load())
}

// TestFaultGoAwayUnderLoad: a backend that sends GOAWAY on its
// connections every 100ms (max connection age) while calls stream
// through. meshd moves to new connections without failing a call.
func TestFaultGoAwayUnderLoad(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "goaway", 2, backend.WithServerOptions(grpc.KeepaliveParams(keepalive.ServerParameters{
		MaxConnectionAge: 100 * time.Millisecond, MaxConnectionAgeGrace: 10 * time.Second,
	})))
	m := startMesh(t, simpleConfig(bs, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	var (
		ok, failed atomic.Int64
		firstErr   atomic.Pointer[error]
		wg         sync.WaitGroup
	)
	deadline := time.Now().Add(1500 * time.Millisecond)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 512)}})
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d calls failed while the backends sent GOAWAY every 100ms; first: %v", n, n+ok.Load(), *firstErr.Load())
	}
	if ok.Load() < 100 {
		t.Errorf("only %d calls succeeded", ok.Load())
	}
	t.Logf("%d calls, %d failed, across the backends' GOAWAYs", ok.Load()+failed.Load(), failed.Load())
}
