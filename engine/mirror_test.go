package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// mirrorResults records Mirror.Done's outcomes.
type mirrorResults struct {
	mu  sync.Mutex
	got []MirrorResult
}

func (m *mirrorResults) done(r MirrorResult) {
	m.mu.Lock()
	m.got = append(m.got, r)
	m.mu.Unlock()
}

func (m *mirrorResults) list() []MirrorResult {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MirrorResult(nil), m.got...)
}

// waitResults waits for n outcomes and returns them.
func (m *mirrorResults) wait(t *testing.T, n int) []MirrorResult {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, "the mirror's outcomes", func() bool { return len(m.list()) >= n })
	return m.list()
}

// mirrorProxy starts a proxy whose streams go to primary with a copy to
// mirrorAddr.
func mirrorProxy(t *testing.T, primary, mirrorAddr string, buf int64, res *mirrorResults) (*proxy, testgrpc.TestServiceClient) {
	t.Helper()
	p := startProxy(t, primary, Config{DialTimeout: 500 * time.Millisecond})
	p.route(func(*Request) (Target, error) {
		return Target{Addr: primary, Mirror: &Mirror{Addr: mirrorAddr, BufferBytes: buf, Done: res.done}}, nil
	})
	_, c := dial(t, p.addr)
	return p, c
}

// TestMirrorCopiesRequest: the mirror gets the same request, every
// message of a stream, with "-shadow" appended to the :authority's host;
// its answer is discarded; the client sees the primary's.
func TestMirrorCopiesRequest(t *testing.T) {
	t.Parallel()
	type seen struct {
		authority string
		body      []byte
	}
	got := make(chan seen, 4)
	shadow := startBackend(t, &testBackend{
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			got <- seen{md.Get(":authority")[0], req.GetPayload().GetBody()}
			return nil, status.Error(codes.Internal, "the mirror's answer, discarded")
		},
		streamIn: func(s testgrpc.TestService_StreamingInputCallServer) error {
			var all []byte
			for {
				m, err := s.Recv()
				if errors.Is(err, io.EOF) {
					got <- seen{body: all}
					return s.SendAndClose(&testpb.StreamingInputCallResponse{})
				}
				if err != nil {
					return err
				}
				all = append(all, m.GetPayload().GetBody()...)
			}
		},
	})
	primary := startBackend(t, &testBackend{})
	res := &mirrorResults{}
	p, c := mirrorProxy(t, primary.addr, shadow.addr, 0, res)

	body := payload(3000).GetBody()
	resp, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
	if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
		t.Fatalf("call: %v, want the primary's echo", err)
	}
	s := <-got
	if want := ShadowAuthority(p.addr); s.authority != want || !bytes.Equal(s.body, body) {
		t.Fatalf("mirror saw authority %q and %d bytes, want %q and the request", s.authority, len(s.body), want)
	}

	st, err := c.StreamingInputCall(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 20 {
		b := msgBody(i, 10<<10)
		want = append(want, b...)
		if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: b}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if _, err := st.CloseAndRecv(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if s := <-got; !bytes.Equal(s.body, want) {
		t.Fatalf("mirror got %d bytes of the stream, want all %d in order", len(s.body), len(want))
	}
	if r := res.wait(t, 2); r[0] != MirrorAnswered || r[1] != MirrorAnswered {
		t.Fatalf("mirror outcomes %v, want both answered", r)
	}
}

// TestMirrorBlackHole: a mirror that accepts connections and never
// speaks costs the calls nothing: they all succeed, and each copy is
// given up (dropped or failed), none left behind.
func TestMirrorBlackHole(t *testing.T) {
	t.Parallel()
	hole := testkit.BlackHole(t)
	primary := startBackend(t, &testBackend{})
	res := &mirrorResults{}
	_, c := mirrorProxy(t, primary.addr, hole.Addr(), 0, res)
	const calls = 20
	for i := range calls {
		if _, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{Payload: payload(100)}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for _, r := range res.wait(t, calls) {
		if r == MirrorAnswered {
			t.Fatalf("outcomes %v: a black hole answered", res.list())
		}
	}
}

// TestMirrorBufferFull: a mirror that does not read its request (its
// flow-control window fills) has its copy dropped once more than
// Mirror.BufferBytes wait for it; the client's stream goes on at the
// primary's pace and succeeds.
func TestMirrorBufferFull(t *testing.T) {
	t.Parallel()
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	shadow := startBackend(t, &testBackend{streamIn: func(s testgrpc.TestService_StreamingInputCallServer) error {
		select { // never reads
		case <-stuck:
		case <-s.Context().Done():
		}
		return nil
	}})
	primary := startBackend(t, &testBackend{})
	res := &mirrorResults{}
	_, c := mirrorProxy(t, primary.addr, shadow.addr, 32<<10, res)
	st, err := c.StreamingInputCall(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const msgs, size = 64, 16 << 10 // 1 MiB, far past the mirror's window
	for i := range msgs {
		if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: msgBody(i, size)}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	resp, err := st.CloseAndRecv()
	if err != nil || resp.GetAggregatedPayloadSize() != msgs*size {
		t.Fatalf("stream: %v %v, want the primary's whole answer", resp, err)
	}
	if r := res.wait(t, 1); r[0] != MirrorDropped {
		t.Fatalf("mirror outcome %v, want dropped", r)
	}
}
