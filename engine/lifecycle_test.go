package engine

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
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
		// Later attempts have the same per-try timeout: on a loaded
		// machine one may pass it too, and is retried.
		rr := &retryRecorder{next: b.addr, max: 5}
		started := make(chan struct{}, 1)
		p, c := retryProxy(t, "192.0.2.1:443", rr, func(tg *Target) {
			tg.Upstream = hangingUpstream(started)
			tg.PerTryTimeout = 200 * time.Millisecond
		})
		if _, err := c.UnaryCall(ctxT(t, 3*time.Second), &testpb.SimpleRequest{Payload: payload(10)}); err != nil {
			t.Fatalf("call: %v (want the per-try timeout to cut the hanging dial and the retry to answer)", err)
		}
		infos := rr.asked()
		if len(infos) == 0 || !infos[0].PerTry || infos[0].NotReached || !errors.Is(infos[0].Err, ErrPerTryTimeout) {
			t.Fatalf("Retry asked %+v; want first for the per-try timeout", infos)
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

// TestCallStateTransitions: the transitions setStateLocked allows are the
// arrows of the diagram in lifecycle.go, and any other panics.
func TestCallStateTransitions(t *testing.T) {
	t.Parallel()
	arrows := map[[2]callState]bool{
		{callStarting, callOpening}: true, // the first attempt
		{callStarting, callDelayed}: true, // an injected delay first
		{callDelayed, callOpening}:  true, // the delay passed
		{callDelayed, callDone}:     true, // the deadline, the client
		{callStarting, callDone}:    true, // malformed request, Director error, deadline spent
		{callOpening, callLinked}:   true, // link
		{callOpening, callOpening}:  true, // reroute of a stream that could not be opened
		{callOpening, callBackoff}:  true, // Retry: the open failed or the per-try timeout passed
		{callOpening, callDone}:     true,
		{callLinked, callCommitted}: true, // the first response frame
		{callLinked, callHeld}:      true, // a retryable call's response HEADERS, held
		{callHeld, callCommitted}:   true, // the first message, or the hold ran out
		{callHeld, callBackoff}:     true, // Retry: a status (or reset) after the held HEADERS
		{callHeld, callDone}:        true,
		{callHeld, callLinked}:      true, // hedging: the held attempt failed, a linked sibling carries on
		{callHeld, callOpening}:     true, // hedging: the same, the sibling still opening
		{callLinked, callOpening}:   true, // reroute of a refused stream
		{callLinked, callBackoff}:   true, // Retry: the attempt failed
		{callLinked, callDone}:      true,
		{callBackoff, callOpening}:  true, // the backoff passed
		{callBackoff, callDone}:     true,
		{callCommitted, callDone}:   true,
	}
	for from := callStarting; from < numCallStates; from++ {
		for to := callStarting; to < numCallStates; to++ {
			legal := arrows[[2]callState{from, to}]
			if got := from.canBecome(to); got != legal {
				t.Errorf("%v.canBecome(%v) = %v, want %v", from, to, got, legal)
			}
			cl := &call{}
			cl.state.Store(uint32(from))
			panicked := func() (p bool) {
				defer func() { p = recover() != nil }()
				cl.setStateLocked(to)
				return false
			}()
			if panicked == legal {
				t.Errorf("setStateLocked %v → %v: panicked %v, want %v", from, to, panicked, !legal)
			}
			if !panicked && cl.stateLocked() != to {
				t.Errorf("setStateLocked %v → %v left %v", from, to, cl.stateLocked())
			}
		}
	}
}

// TestCallEventsCurrent: which events still concern a call, by its state
// and its current attempt (epoch 2, upstream stream cur), and which are
// stale (currentLocked, the one staleness check).
func TestCallEventsCurrent(t *testing.T) {
	t.Parallel()
	cur, old := &hstream{}, &hstream{}
	const now, before = 2, 1
	type ev struct {
		k     eventKind
		epoch uint32
		up    *hstream
	}
	// For each event, the states in which it is current.
	cases := []struct {
		name string
		ev   ev
		in   []callState
	}{
		{"end", ev{evEnd, 0, nil}, []callState{callStarting, callDelayed, callOpening, callLinked, callHeld, callBackoff, callCommitted}},
		{"idle", ev{evIdle, 0, nil}, []callState{callStarting, callDelayed, callOpening, callLinked, callHeld, callBackoff, callCommitted}},
		{"stream", ev{evStream, 0, cur}, []callState{callLinked, callHeld, callCommitted}},
		{"stream left", ev{evStream, 0, old}, nil},
		{"commit", ev{evCommit, 0, cur}, []callState{callLinked, callHeld}},
		{"commit left", ev{evCommit, 0, old}, nil},
		{"link", ev{evLink, now, nil}, []callState{callOpening}},
		{"link left", ev{evLink, before, nil}, nil},
		{"open failed", ev{evOpenFailed, now, nil}, []callState{callOpening}},
		{"open failed left", ev{evOpenFailed, before, nil}, nil},
		{"open refused", ev{evOpenRefused, now, nil}, []callState{callOpening}},
		{"open refused left", ev{evOpenRefused, before, nil}, nil},
		{"per-try", ev{evPerTry, now, nil}, []callState{callOpening, callLinked}},
		{"per-try left", ev{evPerTry, before, nil}, nil},
		{"backoff", ev{evBackoff, now, nil}, []callState{callBackoff}},
		{"backoff left", ev{evBackoff, before, nil}, nil},
		{"hold", ev{evHold, now, nil}, []callState{callHeld}},
		{"hold left", ev{evHold, before, nil}, nil},
		{"delay", ev{evDelay, 0, nil}, []callState{callDelayed}},
	}
	for _, tc := range cases {
		for s := callStarting; s < numCallStates; s++ {
			cl := &call{epoch: now}
			cl.state.Store(uint32(s))
			if s == callLinked || s == callHeld || s == callCommitted || s == callDone {
				cl.up.Store(cur)
			}
			want := false
			for _, in := range tc.in {
				want = want || in == s
			}
			if got := cl.currentLocked(tc.ev.k, tc.ev.epoch, tc.ev.up); got != want {
				t.Errorf("%s in state %v: current = %v, want %v", tc.name, s, got, want)
			}
		}
	}
}

// TestStaleWaiterNotLinked: a call whose attempt was cut while it waited
// for a connection (per-try timeout) and retried to the same address
// through another Upstream is linked only by a connection of its new
// attempt's Upstream: the connection dialled for the attempt it left
// finds a stale waiter (the attempt's epoch) and leaves it.
func TestStaleWaiterNotLinked(t *testing.T) {
	t.Parallel()
	var wrongCalls atomic.Int32
	wrong := startBackend(t, &testBackend{unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		wrongCalls.Add(1)
		return nil, status.Error(codes.Aborted, "the left attempt's connection")
	}})
	right := startBackend(t, &testBackend{})
	gated := func(name, to string) (*Upstream, chan struct{}, chan struct{}) {
		started, release := make(chan struct{}, 1), make(chan struct{})
		return &Upstream{Name: name, Dial: func(ctx context.Context, _ string) (net.Conn, error) {
			select {
			case started <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", to)
		}}, started, release
	}
	up1, started1, release1 := gated("one", wrong.addr)
	up2, started2, release2 := gated("two", right.addr)
	const addr = "backend.test:443" // the same address for every attempt
	rr := &retryRecorder{}
	p := startProxy(t, addr, Config{})
	p.route(func(*Request) (Target, error) {
		return Target{Addr: addr, Upstream: up1, RetryBufferBytes: 1 << 20, PerTryTimeout: 100 * time.Millisecond,
			Retry: func(a RetryInfo) (Target, time.Duration, bool) {
				// Every attempt after the first goes through up2; those
				// its per-try timeout cuts while up2's dial is held are
				// retried there too.
				rr.mu.Lock()
				defer rr.mu.Unlock()
				rr.infos = append(rr.infos, a)
				return Target{Addr: addr, Upstream: up2}, 0, len(rr.infos) < 100
			}}, nil
	})
	_, c := dial(t, p.addr)
	call := unaryAsync(ctxT(t, 10*time.Second), c)
	for _, ch := range []chan struct{}{started1, started2} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("dial not started within 5s")
		}
	}
	// The first attempt's dial completes after the retry started: its
	// connection must not take a later attempt.
	close(release1)
	testkit.WaitFor(t, 5*time.Second, "the first connection", func() bool { return p.srv.Stats().UpstreamConns == 1 })
	// Stats takes Pool.mu, so the dial goroutine has handed out its
	// connection by now.
	_ = p.srv.Stats()
	close(release2)
	if err := recvErr(t, call); err != nil {
		t.Fatalf("call: %v; want the new attempt's backend to answer", err)
	}
	if n := wrongCalls.Load(); n != 0 {
		t.Fatalf("the left attempt's connection carried %d calls; want none", n)
	}
	for _, a := range rr.asked() {
		if !a.PerTry {
			t.Fatalf("Retry asked for %+v; want only per-try timeouts", a)
		}
	}
}

// TestStaleDialFailureIgnored: when the dial an attempt waited for fails
// after the call left that attempt (per-try timeout, retry elsewhere), the
// failure is the left attempt's: the call's new attempt goes on waiting
// for its own connection, with its Target.Pending slot, and Retry is not
// asked about the failure.
func TestStaleDialFailureIgnored(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	fail := make(chan struct{})
	started1 := make(chan struct{}, 1)
	up1 := &Upstream{Name: "failing", Dial: func(ctx context.Context, _ string) (net.Conn, error) {
		started1 <- struct{}{}
		select {
		case <-fail:
			return nil, errors.New("no route to backend")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	started2, release2 := make(chan struct{}, 1), make(chan struct{})
	up2 := &Upstream{Name: "slow", Dial: func(ctx context.Context, _ string) (net.Conn, error) {
		select {
		case started2 <- struct{}{}:
		default:
		}
		select {
		case <-release2:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", b.addr)
	}}
	lim := &countLimiter{max: 10}
	rr := &retryRecorder{}
	p := startProxy(t, b.addr, Config{})
	p.route(func(*Request) (Target, error) {
		return Target{Addr: "a.test:443", Upstream: up1, Pending: lim, RetryBufferBytes: 1 << 20, PerTryTimeout: 100 * time.Millisecond,
			Retry: func(a RetryInfo) (Target, time.Duration, bool) {
				// As in TestStaleWaiterNotLinked: every later attempt
				// waits for up2.
				rr.mu.Lock()
				defer rr.mu.Unlock()
				rr.infos = append(rr.infos, a)
				return Target{Addr: "b.test:443", Upstream: up2}, 0, len(rr.infos) < 100
			}}, nil
	})
	_, c := dial(t, p.addr)
	call := unaryAsync(ctxT(t, 10*time.Second), c)
	for _, ch := range []chan struct{}{started1, started2} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("dial not started within 5s")
		}
	}
	close(fail)
	testkit.WaitFor(t, 5*time.Second, "the first dial's failure", func() bool { return p.srv.Stats().DialErrors == 1 })
	close(release2)
	if err := recvErr(t, call); err != nil {
		t.Fatalf("call: %v; want the new attempt's backend to answer", err)
	}
	for _, a := range rr.asked() {
		if !a.PerTry {
			t.Fatalf("Retry asked for %+v; want only per-try timeouts (the dial failure was the left attempt's)", a)
		}
	}
	lim.check(t)
}

// TestCommittedNotRerouted: a backend that answers a call's HEADERS and
// then resets the stream with REFUSED_STREAM has processed it (its
// response started, and reached the client): the call has committed, so
// it is not rerouted, even though no request DATA was sent yet.
func TestCommittedNotRerouted(t *testing.T) {
	t.Parallel()
	good := startBackend(t, &testBackend{})
	bad := rawBackend(t, func(fr *h2raw.ServerConn, h *http2.MetaHeadersFrame) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true,
			BlockFragment: h2raw.Block(hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})})
		_ = fr.WriteRSTStream(h.StreamID, http2.ErrCodeRefusedStream)
	})
	rr := newRerouter(good.addr)
	p, cc := rerouteProxy(t, bad, rr)
	s, err := testpb.NewTestServiceClient(cc).FullDuplexCall(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv: a message, want the stream's end")
	}
	if res := p.nextResult(t); res.Code == codes.OK || !res.Committed {
		t.Errorf("Result %+v, want a failure after the response started", res)
	}
	if n := rr.count(); n != 0 {
		t.Errorf("Reroute asked %d times after the response started, want never", n)
	}
}
