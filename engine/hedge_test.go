package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// hedgeRecorder is a Hedger that sends hedged attempts to next, in turn,
// takes UNAVAILABLE as the one retryable status, and records what it
// heard.
type hedgeRecorder struct {
	next []string

	mu    sync.Mutex
	n     int
	ended []endedAttempt
}

type endedAttempt struct {
	id int
	r  Result
}

func (h *hedgeRecorder) Hedge() (Target, int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n >= len(h.next) {
		return Target{}, 0, false
	}
	h.n++
	return Target{Addr: h.next[h.n-1], Header: []hpack.HeaderField{{Name: "x-hedged", Value: "1"}}}, h.n, true
}

func (h *hedgeRecorder) Fatal(r Result) bool { return r.Code != codes.Unavailable }

func (h *hedgeRecorder) Ended(id int, r Result) {
	h.mu.Lock()
	h.ended = append(h.ended, endedAttempt{id, r})
	h.mu.Unlock()
}

func (h *hedgeRecorder) endedAttempts() []endedAttempt {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ended)
}

// hedgeProxy starts a proxy whose calls go to first, hedged after delay
// through h (retryable through rr, which no test expects to be asked).
func hedgeProxy(t *testing.T, first string, h *hedgeRecorder, rr *retryRecorder, delay time.Duration, max int) (*proxy, testpb.TestServiceClient) {
	t.Helper()
	return retryProxy(t, first, rr, func(tg *Target) {
		tg.Hedge = &Hedge{Delay: delay, MaxAttempts: max, Hedger: h}
	})
}

// slowBackend answers no call: it waits for the call's end and counts the
// calls cancelled (the losing attempt's reset reaches it as a cancelled
// context).
func slowBackend(t *testing.T, started chan<- struct{}) (*testBackend, *atomic.Int32) {
	var cancelled atomic.Int32
	b := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if started != nil {
			close(started)
		}
		<-ctx.Done()
		if ctx.Err() == context.Canceled {
			cancelled.Add(1)
		}
		return nil, ctx.Err()
	}})
	return b, &cancelled
}

// TestHedgeFastSiblingWins: the first backend never answers; after the
// delay a hedged attempt goes to the second, which answers at once. Its
// answer is the call's, the first attempt is cancelled (its backend sees
// the cancellation), and Retry is never asked.
func TestHedgeFastSiblingWins(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	slow, cancelled := slowBackend(t, started)
	var hedgedHdr atomic.Value
	fast := startBackend(t, &testBackend{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		// The first attempt reaches its backend before this one answers
		// (on a busy machine its dial may take longer than the delay).
		<-started
		md, _ := metadata.FromIncomingContext(ctx)
		hedgedHdr.Store(strings.Join(md.Get("x-hedged"), ","))
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-who", "fast"))
		return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
	}})
	h := &hedgeRecorder{next: []string{fast.addr}}
	rr := &retryRecorder{next: fast.addr}
	p, c := hedgeProxy(t, slow.addr, h, rr, 20*time.Millisecond, 2)

	var hdr metadata.MD
	resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(100)}, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-who"); len(got) != 1 || got[0] != "fast" {
		t.Errorf("client saw x-who %q, want the winner's only", got)
	}
	if len(resp.GetPayload().GetBody()) != 100 {
		t.Fatalf("payload %d bytes, want 100", len(resp.GetPayload().GetBody()))
	}
	if got := hedgedHdr.Load(); got != "1" {
		t.Errorf("hedged attempt's x-hedged = %v, want 1", got)
	}
	r := p.nextResult(t)
	if r.Code != codes.OK || r.Attempt != 1 {
		t.Errorf("Result = %+v, want OK from attempt 1", r)
	}
	testkit.WaitFor(t, 5*time.Second, "slow backend's call not cancelled", func() bool { return cancelled.Load() == 1 })
	if got := h.endedAttempts(); len(got) != 1 || got[0].id != 0 || got[0].r.Code != codes.Canceled {
		t.Errorf("Ended = %+v, want attempt 0 CANCELLED", got)
	}
	if n := len(rr.asked()); n != 0 {
		t.Errorf("Retry asked %d times, want 0", n)
	}
	if n := p.srv.Stats().HedgedAttempts; n != 1 {
		t.Errorf("HedgedAttempts = %d, want 1", n)
	}
}

// TestHedgeFatalEndsCall: a fatal status from either attempt, the first
// or the hedged one, is the call's at once, the other attempt cancelled
// (gRFC A6).
func TestHedgeFatalEndsCall(t *testing.T) {
	t.Parallel()
	for _, fatalFirst := range []bool{false, true} {
		name := map[bool]string{false: "hedged", true: "first"}[fatalFirst]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			started := make(chan struct{})
			slow, cancelled := slowBackend(t, started)
			fatal := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				// The other attempt is in flight, at its backend, before
				// this one fails.
				select {
				case <-started:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return nil, status.Error(codes.InvalidArgument, "fatal")
			}})
			first, hedged := slow.addr, fatal.addr
			if fatalFirst {
				first, hedged = fatal.addr, slow.addr
			}
			h := &hedgeRecorder{next: []string{hedged}}
			rr := &retryRecorder{next: hedged, max: 5}
			p, c := hedgeProxy(t, first, h, rr, 20*time.Millisecond, 2)
			_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
			if r := p.nextResult(t); r.Code != codes.InvalidArgument {
				t.Errorf("Result = %+v", r)
			}
			testkit.WaitFor(t, 5*time.Second, "the other attempt was not cancelled", func() bool { return cancelled.Load() == 1 })
			if got := h.endedAttempts(); len(got) != 1 || got[0].r.Code != codes.Canceled {
				t.Errorf("Ended = %+v, want one CANCELLED", got)
			}
		})
	}
}

// TestHedgeRetryableFailureCarriesOn: the first attempt fails with
// UNAVAILABLE while a hedged one is in flight: the hedged attempt carries
// the call (no retry is started), and its answer is the call's.
func TestHedgeRetryableFailureCarriesOn(t *testing.T) {
	t.Parallel()
	hedgedIn := make(chan struct{})
	first := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		select {
		case <-hedgedIn:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return nil, status.Error(codes.Unavailable, "first gives up")
	}})
	h := &hedgeRecorder{}
	hedged := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		close(hedgedIn)
		// Answer once meshd has seen the first attempt fail.
		if !testkit.Poll(5*time.Second, 0, func() bool { return len(h.endedAttempts()) > 0 || ctx.Err() != nil }) || ctx.Err() != nil {
			return nil, status.Error(codes.Internal, "the first attempt's failure never reached meshd")
		}
		return &testpb.SimpleResponse{Username: "hedged"}, nil
	}})
	h.next = []string{hedged.addr}
	rr := &retryRecorder{next: hedged.addr, max: 5}
	p, c := hedgeProxy(t, first.addr, h, rr, 20*time.Millisecond, 2)
	resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
	if err != nil || resp.GetUsername() != "hedged" {
		t.Fatalf("resp %v, err %v; want the hedged attempt's answer", resp, err)
	}
	if r := p.nextResult(t); r.Code != codes.OK || r.Attempt != 1 {
		t.Errorf("Result = %+v, want OK from attempt 1", r)
	}
	if got := h.endedAttempts(); len(got) != 1 || got[0].id != 0 || got[0].r.Code != codes.Unavailable {
		t.Errorf("Ended = %+v, want attempt 0 UNAVAILABLE", got)
	}
	if n := len(rr.asked()); n != 0 {
		t.Errorf("Retry asked %d times, want 0", n)
	}
}

// TestHedgeFastFirstNoHedge: an attempt that answers before the delay is
// never hedged.
func TestHedgeFastFirstNoHedge(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	h := &hedgeRecorder{next: []string{b.addr}}
	p, c := hedgeProxy(t, b.addr, h, &retryRecorder{next: b.addr}, time.Minute, 2)
	for range 20 {
		if _, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.srv.Stats().HedgedAttempts; n != 0 {
		t.Errorf("HedgedAttempts = %d, want 0", n)
	}
}

// TestHedgeMaxAttempts: with MaxAttempts 2 and attempts that never answer,
// one hedged attempt starts and no third, however many delays pass, until
// the deadline ends the call.
func TestHedgeMaxAttempts(t *testing.T) {
	t.Parallel()
	s1, _ := slowBackend(t, nil)
	s2, _ := slowBackend(t, nil)
	third := make(chan struct{})
	s3, _ := slowBackend(t, third)
	h := &hedgeRecorder{next: []string{s2.addr, s3.addr}}
	p, c := hedgeProxy(t, s1.addr, h, &retryRecorder{next: s3.addr}, 10*time.Millisecond, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	p.nextResult(t)
	if n := p.srv.Stats().HedgedAttempts; n != 1 {
		t.Errorf("HedgedAttempts = %d, want 1 (MaxAttempts 2 in flight)", n)
	}
	h.mu.Lock()
	asked := h.n
	h.mu.Unlock()
	if asked != 1 {
		t.Errorf("Hedge asked %d times, want 1", asked)
	}
	select {
	case <-third:
		t.Error("a third attempt reached a backend")
	default:
	}
}

// TestHedgeLosersCancelledUnderLoad: many concurrent hedged calls over a
// slow and a fast backend, each backend seeing either order: every
// attempt the slow backend sees is cancelled.
func TestHedgeLosersCancelledUnderLoad(t *testing.T) {
	t.Parallel()
	var seen, cancelled atomic.Int32
	slow := startBackend(t, &testBackend{unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		seen.Add(1)
		select {
		case <-ctx.Done():
			cancelled.Add(1)
			return nil, ctx.Err()
		case <-time.After(3 * time.Second):
			return &testpb.SimpleResponse{Username: "slow"}, nil
		}
	}})
	fast := startBackend(t, &testBackend{})
	var n atomic.Int32
	p := startProxy(t, slow.addr, Config{})
	p.route(func(*Request) (Target, error) {
		first, other := slow.addr, fast.addr
		if n.Add(1)%2 == 0 {
			first, other = fast.addr, slow.addr
		}
		h := &hedgeRecorder{next: []string{other}}
		return Target{Addr: first, Retry: (&retryRecorder{next: other}).retry, RetryBufferBytes: 1 << 20,
			Hedge: &Hedge{Delay: time.Millisecond, MaxAttempts: 2, Hedger: h}}, nil
	})
	_, c := dial(t, p.addr)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(10)})
				if err != nil || resp.GetUsername() == "slow" {
					t.Errorf("resp %v err %v", resp, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if !testkit.Poll(2*time.Second, 0, func() bool { return seen.Load() == cancelled.Load() }) {
		t.Errorf("slow backend saw %d attempts, %d cancelled", seen.Load(), cancelled.Load())
	}
}

// TestHedgeClientStream: a client-streaming call is hedged once the client
// half-closed, and the hedged attempt gets the whole request replayed,
// byte for byte.
func TestHedgeClientStream(t *testing.T) {
	t.Parallel()
	const msgs, size = 8, 20 << 10
	recvAll := func(s testpb.TestService_StreamingInputCallServer) (int, error) {
		for i := 0; ; i++ {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return i, nil
			}
			if err != nil {
				return i, err
			}
			if !bytes.Equal(req.GetPayload().GetBody(), msgBody(i, size)) {
				return i, status.Errorf(codes.DataLoss, "message %d differs", i)
			}
		}
	}
	slow := startBackend(t, &testBackend{streamIn: func(s testpb.TestService_StreamingInputCallServer) error {
		if _, err := recvAll(s); err != nil {
			return err
		}
		<-s.Context().Done()
		return s.Context().Err()
	}})
	fast := startBackend(t, &testBackend{streamIn: func(s testpb.TestService_StreamingInputCallServer) error {
		n, err := recvAll(s)
		if err != nil {
			return err
		}
		return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
	}})
	h := &hedgeRecorder{next: []string{fast.addr}}
	p, c := hedgeProxy(t, slow.addr, h, &retryRecorder{next: fast.addr}, 10*time.Millisecond, 2)
	st, err := c.StreamingInputCall(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: msgBody(i, size)}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := st.CloseAndRecv()
	if err != nil || resp.GetAggregatedPayloadSize() != msgs {
		t.Fatalf("resp %v, err %v; want the hedged attempt's count of %d", resp, err, msgs)
	}
	if r := p.nextResult(t); r.Code != codes.OK || r.Attempt != 1 {
		t.Errorf("Result = %+v, want OK from attempt 1", r)
	}
}
