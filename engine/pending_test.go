package engine

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// countLimiter is a Target.Pending of max slots that records misuse: a
// release without an acquire.
type countLimiter struct {
	max                          int64
	n, acquired, refused, misuse atomic.Int64
}

func (l *countLimiter) AcquirePending() bool {
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		l.refused.Add(1)
		return false
	}
	l.acquired.Add(1)
	return true
}

func (l *countLimiter) ReleasePending() {
	if l.n.Add(-1) < 0 {
		l.misuse.Add(1)
	}
}

// check fails the test unless no slot is held and none was released twice.
func (l *countLimiter) check(t *testing.T) {
	t.Helper()
	if n, m := l.n.Load(), l.misuse.Load(); n != 0 || m != 0 {
		t.Fatalf("pending = %d, extra releases = %d; want 0, 0", n, m)
	}
}

// gatedDial is a Config.Dial whose dials wait for the test: each takes one
// value from gate (nil: connect, else fail with it) and announces itself on
// started first.
type gatedDial struct {
	started chan struct{}
	gate    chan error
}

func newGatedDial() *gatedDial {
	return &gatedDial{started: make(chan struct{}, 16), gate: make(chan error, 16)}
}

func (g *gatedDial) dial(ctx context.Context, addr string) (net.Conn, error) {
	g.started <- struct{}{}
	select {
	case err := <-g.gate:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (g *gatedDial) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(5 * time.Second):
		t.Fatal("no dial started within 5s")
	}
}

const pendingMsg = `meshd: cluster "c" is at max_pending (1 calls waiting for an upstream stream); not queued`

// pendingProxy starts a backend (with opts) and a proxy that dials it
// through g and gives every call lim as its Target.Pending.
func pendingProxy(t *testing.T, g *gatedDial, lim *countLimiter, cfg Config, opts ...grpc.ServerOption) (*proxy, testpb.TestServiceClient, string) {
	t.Helper()
	b := startBackend(t, &testBackend{}, opts...)
	cfg.Dial = g.dial
	p := startProxy(t, b.addr, cfg)
	perr := status.Error(codes.ResourceExhausted, pendingMsg)
	p.route(func(*Request) (Target, error) {
		return Target{Addr: b.addr, Pending: lim, PendingErr: perr}, nil
	})
	_, c := dial(t, p.addr)
	return p, c, b.addr
}

// unaryAsync runs a UnaryCall and delivers its error.
func unaryAsync(ctx context.Context, c testpb.TestServiceClient) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: payload(10)})
		ch <- err
	}()
	return ch
}

func recvErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("call did not return within 5s")
		return nil
	}
}

// wantRefused checks a call refused by the pending limit: at once, with
// PendingErr's status.
func wantRefused(t *testing.T, c testpb.TestServiceClient) {
	t.Helper()
	start := time.Now()
	_, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(10)})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != pendingMsg {
		t.Fatalf("call over the pending limit: %v; want RESOURCE_EXHAUSTED %q", err, pendingMsg)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("refusal took %v; want it at once", d)
	}
}

// TestPendingWhileDialing: a call waiting for its backend's connection to
// be dialled holds a pending slot; with the limit reached the next one is
// refused at once with PendingErr's status; the wait ends when the stream
// is linked, and calls that find a connection never touch the limiter.
func TestPendingWhileDialing(t *testing.T) {
	t.Parallel()
	g := newGatedDial()
	lim := &countLimiter{max: 1}
	p, c, _ := pendingProxy(t, g, lim, Config{ConnsPerBackend: 1})

	first := unaryAsync(ctxT(t, 10*time.Second), c)
	g.waitStarted(t)
	testkit.WaitFor(t, 5*time.Second, "the first call to wait for the dial", func() bool { return lim.n.Load() == 1 })

	wantRefused(t, c)
	if r := p.nextResult(t); r.Code != codes.ResourceExhausted || !r.NotReached || r.Err == nil {
		t.Fatalf("refused call's Result = %+v; want RESOURCE_EXHAUSTED, NotReached, an Err", r)
	}

	g.gate <- nil
	if err := recvErr(t, first); err != nil {
		t.Fatalf("waiting call: %v", err)
	}
	lim.check(t)
	for range 3 {
		if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(10)}); err != nil {
			t.Fatal(err)
		}
	}
	if n, r := lim.acquired.Load(), lim.refused.Load(); n != 1 || r != 1 {
		t.Fatalf("acquired %d, refused %d; want 1, 1 (calls with a free stream never wait)", n, r)
	}
	lim.check(t)
}

// TestPendingAtStreamLimit: with every connection at the backend's
// MAX_CONCURRENT_STREAMS the Pool dials another; the call waiting for it
// is pending, and the next one is refused.
func TestPendingAtStreamLimit(t *testing.T) {
	t.Parallel()
	g := newGatedDial()
	lim := &countLimiter{max: 1}
	g.gate <- nil // the first connection
	_, c, _ := pendingProxy(t, g, lim, Config{ConnsPerBackend: 1}, grpc.MaxConcurrentStreams(1))

	// One stream open: the connection is full.
	ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer cancel()
	s := testkit.OpenStream(t, ctx, c)
	g.waitStarted(t)
	held := lim.acquired.Load() // the first call waited for the first dial

	second := unaryAsync(ctxT(t, 10*time.Second), c)
	g.waitStarted(t) // a second connection for it
	testkit.WaitFor(t, 5*time.Second, "the second call to wait for a stream", func() bool { return lim.n.Load() == 1 })
	wantRefused(t, c)

	g.gate <- nil
	if err := recvErr(t, second); err != nil {
		t.Fatalf("waiting call: %v", err)
	}
	if n := lim.acquired.Load() - held; n != 1 {
		t.Fatalf("acquired %d for the second call; want 1", n)
	}
	lim.check(t)
	_ = s.CloseSend()
	cancel()
}

// TestPendingReleased: every way a wait ends releases the slot once: the
// client gives up, the dial fails, the call is rerouted (and waits again),
// a per-try timeout ends the attempt (the backoff is no wait).
func TestPendingReleased(t *testing.T) {
	t.Parallel()
	t.Run("client cancels", func(t *testing.T) {
		t.Parallel()
		g := newGatedDial()
		lim := &countLimiter{max: 1}
		// The dial outlasts the test: only the client's cancellation can
		// end the wait.
		_, c, _ := pendingProxy(t, g, lim, Config{DialTimeout: time.Minute})
		ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
		call := unaryAsync(ctx, c)
		g.waitStarted(t)
		testkit.WaitFor(t, 5*time.Second, "the call to wait", func() bool { return lim.n.Load() == 1 })
		cancel()
		if err := recvErr(t, call); status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call: %v", err)
		}
		// The dial is still in progress: the slot must not wait for it.
		testkit.WaitFor(t, 5*time.Second, "the slot to be released", func() bool { return lim.n.Load() == 0 })
		lim.check(t)
	})
	t.Run("dial fails", func(t *testing.T) {
		t.Parallel()
		g := newGatedDial()
		lim := &countLimiter{max: 1}
		_, c, _ := pendingProxy(t, g, lim, Config{})
		call := unaryAsync(ctxT(t, 10*time.Second), c)
		g.waitStarted(t)
		testkit.WaitFor(t, 5*time.Second, "the call to wait", func() bool { return lim.n.Load() == 1 })
		g.gate <- errors.New("no route to backend")
		if err := recvErr(t, call); status.Code(err) != codes.Unavailable {
			t.Fatalf("call whose dial failed: %v", err)
		}
		lim.check(t)
	})
	t.Run("rerouted", func(t *testing.T) {
		t.Parallel()
		g := newGatedDial()
		lim := &countLimiter{max: 1}
		p, c, addr := pendingProxy(t, g, lim, Config{})
		other := startBackend(t, &testBackend{})
		rr := newRerouter(other.addr)
		p.route(func(*Request) (Target, error) { return Target{Addr: addr, Pending: lim, Reroute: rr}, nil })
		call := unaryAsync(ctxT(t, 10*time.Second), c)
		g.waitStarted(t)
		g.gate <- errors.New("no route to backend")
		rr.waitAsk(t)
		g.waitStarted(t) // the dial to the other backend
		testkit.WaitFor(t, 5*time.Second, "the rerouted call to wait", func() bool { return lim.n.Load() == 1 })
		g.gate <- nil
		if err := recvErr(t, call); err != nil {
			t.Fatalf("rerouted call: %v", err)
		}
		if n := lim.acquired.Load(); n != 2 {
			t.Fatalf("acquired %d; want 2 (one per wait)", n)
		}
		lim.check(t)
	})
	t.Run("per-try timeout", func(t *testing.T) {
		t.Parallel()
		g := newGatedDial()
		lim := &countLimiter{max: 1}
		p, c, addr := pendingProxy(t, g, lim, Config{})
		// The first attempt's dial fails; the second attempt waits for its
		// dial until the per-try timeout cuts it, and is retried after a
		// long backoff. The per-try timeout also bounds the first
		// attempt's dial, so that one fails at once, well within it.
		retried := make(chan int64, 1)
		var asks atomic.Int32
		p.route(func(*Request) (Target, error) {
			return Target{Addr: addr, Pending: lim, RetryBufferBytes: 1 << 20, PerTryTimeout: 250 * time.Millisecond,
				Retry: func(RetryInfo) (Target, time.Duration, bool) {
					if asks.Add(1) == 1 {
						return Target{Addr: addr}, 0, true
					}
					select {
					case retried <- lim.n.Load():
					default:
					}
					return Target{Addr: addr}, time.Hour, true
				}}, nil
		})
		ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
		g.gate <- errors.New("no route to backend")
		call := unaryAsync(ctx, c)
		g.waitStarted(t)
		g.waitStarted(t)
		select {
		case n := <-retried:
			if n != 0 {
				t.Fatalf("pending = %d when the attempt cut while waiting is retried; want 0", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Retry not called twice within 5s")
		}
		if n := lim.acquired.Load(); n != 2 {
			t.Fatalf("acquired %d; want 2 (one per attempt that waited)", n)
		}
		cancel()
		if err := recvErr(t, call); status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call: %v", err)
		}
		lim.check(t)
	})
}

// TestPendingNil: without Target.Pending calls waiting for a dial are
// neither counted nor refused.
func TestPendingNil(t *testing.T) {
	t.Parallel()
	g := newGatedDial()
	b := startBackend(t, &testBackend{})
	p := startProxy(t, b.addr, Config{Dial: g.dial, ConnsPerBackend: 1})
	_, c := dial(t, p.addr)
	calls := []<-chan error{unaryAsync(ctxT(t, 10*time.Second), c), unaryAsync(ctxT(t, 10*time.Second), c)}
	g.waitStarted(t)
	g.gate <- nil
	for _, ch := range calls {
		if err := recvErr(t, ch); err != nil {
			t.Fatal(err)
		}
	}
}
