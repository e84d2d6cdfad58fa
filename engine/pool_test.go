package engine

import (
	"github.com/meshd/meshd/internal/testkit/h2raw"

	"github.com/meshd/meshd/internal/testkit"

	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// countingDial is a PoolConfig.Dial over TCP that counts its dials, so a
// test can tell a kept connection from a new one.
func countingDial(n *atomic.Int64) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// TestSharedPool: two Servers whose Targets name one Upstream with a Pool
// of its own (NewPool) share that Pool's connections: a second Server does
// not double them, neither Server's own Pool gets any, Forget on a
// Server's own Pool or a Server's Close leaves them, and only the Pool's
// owner (Forget, Shutdown) ends them.
func TestSharedPool(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	var dials atomic.Int64
	pool := NewPool(PoolConfig{Dial: countingDial(&dials)})
	t.Cleanup(func() { _ = pool.Close() })
	up := &Upstream{Name: "shared", Pool: pool}
	route := func(*Request) (Target, error) { return Target{Addr: b.addr, Upstream: up}, nil }
	p1 := startProxy(t, b.addr, Config{})
	p1.route(route)
	p2 := startProxy(t, b.addr, Config{})
	p2.route(route)
	_, c1 := dial(t, p1.addr)
	_, c2 := dial(t, p2.addr)
	call := func(c testgrpc.TestServiceClient) error {
		_, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(100)})
		return err
	}
	for i := 0; i < 10; i++ {
		for _, c := range []testgrpc.TestServiceClient{c1, c2} {
			if err := call(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	testkit.WaitFor(t, 5*time.Second, "the pool's connections", func() bool { return pool.Stats().Conns == DefaultConnsPerBackend })
	if n := dials.Load(); n != DefaultConnsPerBackend {
		t.Fatalf("%d dials for two Servers, want %d: the connections were not shared", n, DefaultConnsPerBackend)
	}
	for i, p := range []*proxy{p1, p2} {
		if st := p.srv.Stats(); st.UpstreamConns != 0 || st.DialErrors != 0 {
			t.Errorf("server %d's own pool: %d connections, %d dial errors; want none", i+1, st.UpstreamConns, st.DialErrors)
		}
	}

	// Forgetting the address in a Server's own Pool is not the owner's
	// Forget: the shared connections stay.
	p1.srv.Pool().Forget(b.addr)
	if err := p1.srv.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := call(c2); err != nil {
			t.Fatalf("call through the other Server after the first closed: %v", err)
		}
	}
	if n := dials.Load(); n != DefaultConnsPerBackend {
		t.Fatalf("%d dials after a Server closed, want %d: its Close or Forget took the shared connections", n, DefaultConnsPerBackend)
	}

	// The owner's Forget drains them; the next call dials afresh.
	pool.Forget(b.addr)
	testkit.WaitFor(t, 5*time.Second, "the forgotten connections to close", func() bool { return pool.Stats().Conns == 0 })
	if err := call(c2); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n <= DefaultConnsPerBackend {
		t.Fatalf("%d dials after Forget, want a new one", n)
	}

	// Shutdown closes the idle connections and refuses later streams.
	if err := pool.Shutdown(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := pool.Stats().Conns; n != 0 {
		t.Fatalf("%d connections after Shutdown", n)
	}
	if err := call(c2); status.Code(err) != codes.Unavailable {
		t.Fatalf("call on a shut down pool: %v, want UNAVAILABLE", err)
	}
}

// TestPoolServerFrameSizes: a Server and a Pool configured apart may read
// frames of different sizes. A client DATA frame larger than the Pool's
// MaxFrameSize is queued on a backend connection in a buffer of the
// Pool's, and must arrive whole.
func TestPoolServerFrameSizes(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	pool := NewPool(PoolConfig{}) // MaxFrameSize 16 KiB
	t.Cleanup(func() { _ = pool.Close() })
	up := &Upstream{Pool: pool}
	p := startProxy(t, b.addr, Config{MaxFrameSize: 1 << 16})
	p.route(func(*Request) (Target, error) { return Target{Addr: b.addr, Upstream: up}, nil })

	rc := h2raw.New(t, p.addr)
	// meshd's SETTINGS announce the 64 KiB frames it accepts.
	rc.Next("SETTINGS", func(f http2.Frame) bool { sf, ok := f.(*http2.SettingsFrame); return ok && !sf.IsAck() })
	want := payload(60000)
	msg := h2raw.MarshalMessage(t, &testpb.SimpleRequest{Payload: want})
	if len(msg) <= DefaultMaxFrameSize || len(msg) > 65535 {
		t.Fatalf("message of %d bytes: want one frame above the Pool's max and within the initial windows", len(msg))
	}
	// The first stream waits for the dial, holding its DATA in the call;
	// the second finds the connection and queues its DATA there at once.
	for _, id := range []uint32{1, 3} {
		rc.Headers(id, h2raw.Request("/grpc.testing.TestService/UnaryCall"), false)
		if err := rc.Write(func(fr *http2.Framer) error { return fr.WriteData(id, true, msg) }); err != nil {
			t.Fatal(err)
		}
		var resp []byte
		var code string
		rc.Next("trailers", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.DataFrame:
				if f.StreamID == id {
					resp = append(resp, f.Data()...)
				}
			case *http2.MetaHeadersFrame:
				if f.StreamID == id && f.StreamEnded() {
					for _, hf := range f.RegularFields() {
						if hf.Name == "grpc-status" {
							code = hf.Value
						}
					}
					return true
				}
			}
			return false
		})
		if code != "0" {
			t.Fatalf("stream %d: grpc-status %q, want 0 (the backend got a cut message?)", id, code)
		}
		if len(resp) < 5 || int(binary.BigEndian.Uint32(resp[1:5])) != len(resp)-5 {
			t.Fatalf("stream %d: malformed response message (%d bytes)", id, len(resp))
		}
		var out testpb.SimpleResponse
		if err := proto.Unmarshal(resp[5:], &out); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(out.GetPayload(), want) {
			t.Fatalf("stream %d: echoed payload differs from the request's (%d bytes back)", id, len(out.GetPayload().GetBody()))
		}
		// The stream's window: the response is as large as the request.
		if err := rc.Write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(len(resp))) }); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPoolCloseIdempotent: Close may follow Shutdown or another Close.
func TestPoolCloseIdempotent(t *testing.T) {
	t.Parallel()
	pool := NewPool(PoolConfig{})
	if err := pool.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = pool.Close()
	_ = pool.Close()
	if err := pool.Shutdown(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
