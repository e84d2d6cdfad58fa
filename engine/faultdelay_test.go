package engine

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// faultProxy starts a backend counting its calls and a proxy whose
// streams go to it with Target.FaultDelay d and Target.Timeout timeout.
func faultProxy(t *testing.T, d, timeout time.Duration) (*proxy, testgrpc.TestServiceClient, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	b := startBackend(t, &testBackend{unary: func(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		calls.Add(1)
		return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
	}})
	p := startProxy(t, b.addr, Config{})
	p.route(func(*Request) (Target, error) {
		return Target{Addr: b.addr, FaultDelay: d, Timeout: timeout}, nil
	})
	_, c := dial(t, p.addr)
	return p, c, &calls
}

// TestFaultDelay: Target.FaultDelay holds a call back before its first
// attempt, on a timer: the call then goes through whole (request frames
// that arrived meanwhile included), later than the delay; a deadline
// shorter than the delay ends it with DEADLINE_EXCEEDED before it reaches
// the backend.
func TestFaultDelay(t *testing.T) {
	t.Parallel()
	const delay = 300 * time.Millisecond
	t.Run("delayed", func(t *testing.T) {
		t.Parallel()
		p, c, calls := faultProxy(t, delay, 0)
		start := time.Now()
		resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(1000)})
		if err != nil || len(resp.GetPayload().GetBody()) != 1000 {
			t.Fatalf("call: %v", err)
		}
		if took := time.Since(start); took < delay {
			t.Fatalf("answered after %v, before the %v delay", took, delay)
		}
		if res := p.nextResult(t); res.Code != codes.OK || calls.Load() != 1 {
			t.Fatalf("Result %+v, %d backend calls", res, calls.Load())
		}
	})
	t.Run("deadline shorter", func(t *testing.T) {
		t.Parallel()
		p, c, calls := faultProxy(t, delay, 0)
		_, err := c.UnaryCall(ctxT(t, 100*time.Millisecond), &testpb.SimpleRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call: %v, want DEADLINE_EXCEEDED", err)
		}
		// meshd's timer for the client's deadline and the client's own
		// cancel at that deadline race; either way nothing went upstream.
		if res := p.nextResult(t); !res.NotReached || !(errors.Is(res.Err, ErrDeadline) || errors.Is(res.Err, ErrClientGone)) {
			t.Fatalf("Result %+v, want the deadline, not reached", res)
		}
		if n := calls.Load(); n != 0 {
			t.Fatalf("the backend got %d calls", n)
		}
	})
	t.Run("route timeout shorter", func(t *testing.T) {
		t.Parallel()
		p, c, _ := faultProxy(t, delay, 100*time.Millisecond)
		if _, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{}); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call: %v, want DEADLINE_EXCEEDED", err)
		}
		if res := p.nextResult(t); res.Code != codes.DeadlineExceeded || !errors.Is(res.Err, ErrDeadline) || !res.NotReached {
			t.Fatalf("Result %+v, want meshd's deadline, not reached", res)
		}
	})
	t.Run("stream sent during the delay", func(t *testing.T) {
		t.Parallel()
		b := startBackend(t, &testBackend{})
		p := startProxy(t, b.addr, Config{})
		p.route(func(*Request) (Target, error) { return Target{Addr: b.addr, FaultDelay: delay}, nil })
		_, c := dial(t, p.addr)
		s, err := c.StreamingInputCall(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: payload(100)}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 500 {
			t.Fatalf("CloseAndRecv: %v %v, want all 500 bytes", resp, err)
		}
		if res := p.nextResult(t); res.Code != codes.OK {
			t.Fatalf("Result %+v", res)
		}
	})
	t.Run("client cancels during the delay", func(t *testing.T) {
		t.Parallel()
		p, c, calls := faultProxy(t, 10*time.Second, 0)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			done <- err
		}()
		testkit.WaitFor(t, 5*time.Second, "the call at the proxy", func() bool { return p.srv.Stats().ActiveStreams > 0 })
		cancel()
		if err := <-done; status.Code(err) != codes.Canceled {
			t.Fatalf("call: %v", err)
		}
		if res := p.nextResult(t); !errors.Is(res.Err, ErrClientGone) || calls.Load() != 0 {
			t.Fatalf("Result %+v, %d backend calls", res, calls.Load())
		}
	})
}
