package engine

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// hangingUpstream is an Upstream whose dials never connect: they wait
// until the Pool gives up on them (DialTimeout, or the Pool closing).
func hangingUpstream(started chan<- struct{}) *Upstream {
	return &Upstream{Name: "hanging", Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}}
}

// TestTimeoutsCoverFirstDial: a call's resilience timers run from the
// call's start, as the grpc engine's did, not from its first upstream
// stream: the first attempt's per-try timeout also bounds the wait for its
// connection (as it does for every later attempt), and so does the idle
// timeout.
func TestTimeoutsCoverFirstDial(t *testing.T) {
	t.Parallel()
	t.Run("per-try", func(t *testing.T) {
		t.Parallel()
		b := startBackend(t, &testBackend{})
		rr := &retryRecorder{next: b.addr, max: 1}
		started := make(chan struct{}, 1)
		p, c := retryProxy(t, "192.0.2.1:443", rr, func(tg *Target) {
			tg.Upstream = hangingUpstream(started)
			tg.PerTryTimeout = 200 * time.Millisecond
		})
		if _, err := c.UnaryCall(ctxT(t, 3*time.Second), &testpb.SimpleRequest{Payload: payload(10)}); err != nil {
			t.Fatalf("call: %v (want the per-try timeout to cut the hanging dial and the retry to answer)", err)
		}
		infos := rr.asked()
		if len(infos) != 1 || !infos[0].PerTry || infos[0].NotReached || !errors.Is(infos[0].Err, ErrPerTryTimeout) {
			t.Fatalf("Retry asked %+v; want once, for the per-try timeout", infos)
		}
		if res := p.nextResult(t); res.Code != codes.OK {
			t.Fatalf("result %+v", res)
		}
	})
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		started := make(chan struct{}, 1)
		p := startProxy(t, "192.0.2.1:443", Config{})
		idleErr := status.Error(codes.DeadlineExceeded, "meshd: idle_timeout 200ms")
		p.route(func(*Request) (Target, error) {
			return Target{Addr: "192.0.2.1:443", Upstream: hangingUpstream(started),
				IdleTimeout: 200 * time.Millisecond, IdleErr: idleErr}, nil
		})
		_, c := dial(t, p.addr)
		_, err := c.UnaryCall(ctxT(t, 3*time.Second), &testpb.SimpleRequest{Payload: payload(10)})
		if status.Convert(err).Message() != "meshd: idle_timeout 200ms" {
			t.Fatalf("call: %v; want the idle timeout's status", err)
		}
		if res := p.nextResult(t); !errors.Is(res.Err, ErrIdleTimeout) || !res.NotReached {
			t.Fatalf("result %+v; want the idle timeout, not reached", res)
		}
	})
}
