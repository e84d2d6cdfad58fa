package engine

import (
	"errors"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// rerouter sends a call that did not reach its backend on through next,
// one address per reroute, and records what it was asked.
type rerouter struct {
	next []string

	mu    sync.Mutex
	asked []Result
	ch    chan Result // every ask
}

func newRerouter(next ...string) *rerouter {
	return &rerouter{next: next, ch: make(chan Result, 16)}
}

func (r *rerouter) Reroute(failed Result) (Target, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.asked)
	r.asked = append(r.asked, failed)
	r.ch <- failed
	if n >= len(r.next) {
		return Target{}, false
	}
	// x-echo-*: the test backend returns it in the response header.
	return Target{Addr: r.next[n], Header: []hpack.HeaderField{{Name: "x-echo-reroute", Value: strconv.Itoa(n + 1)}}}, true
}

func (r *rerouter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.asked)
}

// waitAsk waits for the next Reroute.
func (r *rerouter) waitAsk(t *testing.T) Result {
	t.Helper()
	select {
	case res := <-r.ch:
		return res
	case <-time.After(5 * time.Second):
		t.Fatal("Reroute not called within 5s")
		return Result{}
	}
}

// rerouteProxy starts a proxy that sends every stream to first, with rr as
// its Rerouter.
func rerouteProxy(t *testing.T, first string, rr *rerouter) (*proxy, *grpc.ClientConn) {
	t.Helper()
	p := startProxy(t, first, Config{})
	p.route(func(*Request) (Target, error) { return Target{Addr: first, Reroute: rr}, nil })
	cc, _ := dial(t, p.addr)
	return p, cc
}

// TestRerouteDialFailure: a call whose backend refuses connections never
// reached it; with Target.Reroute (and no retry policy, no replay log) it
// goes to the backend Reroute names, with its whole request and the
// reroute's header fields, and Done reports one success.
func TestRerouteDialFailure(t *testing.T) {
	t.Parallel()
	good := startBackend(t, &testBackend{})

	t.Run("unary", func(t *testing.T) {
		t.Parallel()
		rr := newRerouter(good.addr)
		p, cc := rerouteProxy(t, testkit.FreeAddr(t), rr)
		var hdr metadata.MD
		resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctxT(t, 5*time.Second),
			&testpb.SimpleRequest{Payload: payload(1000)}, grpc.Header(&hdr))
		if err != nil {
			t.Fatalf("call not rerouted: %v", err)
		}
		checkBody(t, resp.GetPayload(), 1000)
		if got := hdr.Get("x-echo-reroute"); len(got) != 1 || got[0] != "1" {
			t.Errorf("backend saw x-echo-reroute %q, want the reroute's \"1\"", got)
		}
		a := rr.waitAsk(t)
		if !a.NotReached || a.Code != codes.Unavailable || a.Err == nil || errors.Is(a.Err, ErrRefused) || a.Committed {
			t.Errorf("Reroute asked with %+v, want a not-reached dial failure", a)
		}
		if res := p.nextResult(t); res.Code != codes.OK || res.NotReached || res.BytesIn == 0 {
			t.Errorf("Result %+v, want one success", res)
		}
	})

	t.Run("client stream", func(t *testing.T) {
		t.Parallel()
		rr := newRerouter(good.addr)
		p, cc := rerouteProxy(t, testkit.FreeAddr(t), rr)
		s, err := testpb.NewTestServiceClient(cc).StreamingInputCall(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for i := range 4 {
			b := msgBody(i, 3000+i)
			want += len(b)
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: b}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil || int(resp.GetAggregatedPayloadSize()) != want {
			t.Fatalf("stream: %v, %d bytes, want %d", err, resp.GetAggregatedPayloadSize(), want)
		}
		if res := p.nextResult(t); res.Code != codes.OK || res.BytesIn == 0 || rr.count() != 1 {
			t.Errorf("Result %+v after %d reroutes, want one success after 1", res, rr.count())
		}
	})

	t.Run("until Reroute says no", func(t *testing.T) {
		t.Parallel()
		rr := newRerouter(testkit.FreeAddr(t)) // the reroute fails too, then no more
		p, cc := rerouteProxy(t, testkit.FreeAddr(t), rr)
		_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(10)})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call: %v, want UNAVAILABLE", err)
		}
		res := p.nextResult(t)
		if res.Code != codes.Unavailable || !res.NotReached {
			t.Errorf("Result %+v, want UNAVAILABLE, not reached", res)
		}
		if n := rr.count(); n != 2 {
			t.Errorf("Reroute asked %d times, want 2", n)
		}
	})
}

// TestRerouteRefusedStream: a backend that refuses the stream (or excludes
// it with GOAWAY) when only the request HEADERS reached it: the call goes
// to the backend Reroute names, the refusal never reaches the client, and
// the request DATA, sent by the client only once the call was rerouted,
// reaches that backend. The request is unary on the wire.
func TestRerouteRefusedStream(t *testing.T) {
	t.Parallel()
	good := startBackend(t, &testBackend{})
	for _, tc := range []struct {
		name   string
		refuse func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame)
	}{
		{"REFUSED_STREAM", func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame) {
			_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}},
		{"GOAWAY below the stream", func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame) {
			_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rr := newRerouter(good.addr)
			p, cc := rerouteProxy(t, rawBackend(t, tc.refuse), rr)
			ctx := ctxT(t, 5*time.Second)
			// grpc-go sends the HEADERS when the stream is created, the
			// message only with SendMsg.
			s, err := cc.NewStream(ctx, &grpc.StreamDesc{}, "/grpc.testing.TestService/UnaryCall")
			if err != nil {
				t.Fatal(err)
			}
			a := rr.waitAsk(t)
			if !a.NotReached || a.Code != codes.Unavailable || !errors.Is(a.Err, ErrRefused) {
				t.Errorf("Reroute asked with %+v, want a refused stream", a)
			}
			if err := s.SendMsg(&testpb.SimpleRequest{Payload: payload(500)}); err != nil {
				t.Fatal(err)
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var resp testpb.SimpleResponse
			if err := s.RecvMsg(&resp); err != nil {
				t.Fatalf("call not rerouted: %v", err)
			}
			checkBody(t, resp.GetPayload(), 500)
			if err := s.RecvMsg(&resp); err != io.EOF {
				t.Fatalf("end of call: %v", err)
			}
			if res := p.nextResult(t); res.Code != codes.OK || res.NotReached {
				t.Errorf("Result %+v, want one success", res)
			}
		})
	}
}

// TestRefusedAfterDataNotRerouted: when request DATA already went to the
// stream the backend refuses, meshd no longer has it (no copy is kept for a
// call without retries), so it does not reroute: the client gets
// REFUSED_STREAM, which grpc-go retries once transparently (refused again
// here), and Reroute is never asked.
func TestRefusedAfterDataNotRerouted(t *testing.T) {
	t.Parallel()
	good := startBackend(t, &testBackend{})
	var mu sync.Mutex
	got := 0 // request DATA bytes the refusing backend read
	bad := h2raw.StartBackend(t, func(sc *h2raw.ServerConn, f http2.Frame) error {
		if d, ok := f.(*http2.DataFrame); ok {
			mu.Lock()
			got += len(d.Data())
			mu.Unlock()
			if d.StreamEnded() {
				_ = sc.WriteRSTStream(d.StreamID, http2.ErrCodeRefusedStream)
			}
		}
		return nil
	}).Addr()
	rr := newRerouter(good.addr)
	p, cc := rerouteProxy(t, bad, rr)
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(100)})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call: %v, want UNAVAILABLE (refused twice)", err)
	}
	for range 2 {
		if res := p.nextResult(t); !res.NotReached || !errors.Is(res.Err, ErrRefused) {
			t.Errorf("Result %+v, want refused, not reached", res)
		}
	}
	if n := rr.count(); n != 0 {
		t.Errorf("Reroute asked %d times, want never", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if got == 0 {
		t.Error("the refusing backend read no request DATA")
	}
}
