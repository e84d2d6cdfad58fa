package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// rawBackend is an HTTP/2 server (h2raw) that answers each request HEADERS
// with whatever onHeaders writes, to play backends that refuse streams or
// go away.
func rawBackend(t *testing.T, onHeaders func(sc *h2raw.ServerConn, f *http2.MetaHeadersFrame)) string {
	t.Helper()
	return h2raw.StartBackend(t, func(sc *h2raw.ServerConn, f http2.Frame) error {
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			onHeaders(sc, h)
		}
		return nil
	}).Addr()
}

// TestNotReachedRetriedTransparently: a stream the backend never processed
// (REFUSED_STREAM, or above its GOAWAY's last stream id) is refused to the
// client, which retries it transparently; the Result says NotReached.
func TestNotReachedRetriedTransparently(t *testing.T) {
	t.Parallel()
	good := startBackend(t, &testBackend{})
	tests := []struct {
		name    string
		refuse  func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame)
		wantErr error
	}{
		{"REFUSED_STREAM", func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame) {
			_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}, ErrRefused},
		{"GOAWAY below the stream", func(fr *h2raw.ServerConn, f *http2.MetaHeadersFrame) {
			_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}, ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bad := rawBackend(t, tt.refuse)
			p := startProxy(t, good.addr, Config{})
			var n atomic.Int32
			p.route(func(*Request) (Target, error) {
				if n.Add(1) == 1 {
					return Target{Addr: bad}, nil
				}
				return Target{Addr: good.addr}, nil
			})
			_, c := dial(t, p.addr)
			resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(100)})
			if err != nil {
				t.Fatalf("call not retried transparently: %v", err)
			}
			checkBody(t, resp.GetPayload(), 100)
			// Each attempt reports on its own goroutine: the order in
			// which the two Results arrive is not the attempts' order.
			first, second := p.nextResult(t), p.nextResult(t)
			if second.NotReached {
				first, second = second, first
			}
			if !first.NotReached || first.Code != codes.Unavailable || !errors.Is(first.Err, tt.wantErr) || first.Committed {
				t.Fatalf("first attempt result %+v", first)
			}
			if second.Code != codes.OK || second.NotReached {
				t.Fatalf("retry result %+v", second)
			}
		})
	}
}

// TestBackendDies: a backend connection lost mid-call gives the client
// UNAVAILABLE, before or after the response started.
func TestBackendDies(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	b := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if len(req.GetResponseParameters()) > 0 {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(10)}); err != nil {
				return err
			}
		}
		started <- struct{}{}
		<-s.Context().Done()
		return s.Context().Err()
	}}
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed=%v", committed), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer()
			testgrpc.RegisterTestServiceServer(gs, b)
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = gs.Serve(ln)
			}()
			defer func() { gs.Stop(); <-served }()
			p := startProxy(t, ln.Addr().String(), Config{})
			_, c := dial(t, p.addr)
			req := &testpb.StreamingOutputCallRequest{}
			if committed {
				req.ResponseParameters = params(10)
			}
			s, err := c.StreamingOutputCall(ctxT(t, 5*time.Second), req)
			if err != nil {
				t.Fatal(err)
			}
			if committed {
				if _, err := s.Recv(); err != nil {
					t.Fatal(err)
				}
			}
			<-started
			gs.Stop()
			_, err = s.Recv()
			if st := status.Convert(err); st.Code() != codes.Unavailable {
				t.Fatalf("Recv = %v, want Unavailable", err)
			}
			r := p.nextResult(t)
			if r.Code != codes.Unavailable || r.Committed != committed || r.NotReached {
				t.Fatalf("result %+v", r)
			}
		})
	}
}

// TestIdleTimeout: idle client and backend connections are closed.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	p := startProxy(t, b.addr, Config{IdleTimeout: 100 * time.Millisecond})
	_, c := dial(t, p.addr)
	for i := 0; i < 2; i++ {
		if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 5*time.Second, "idle connections to close", func() bool {
			st := p.srv.Stats()
			return st.ActiveConns == 0 && st.UpstreamConns == 0
		})
	}
}

// TestMaxSendMsgSize: an oversized response message is not forwarded.
func TestMaxSendMsgSize(t *testing.T) {
	t.Parallel()
	p, c := setup(t, &testBackend{}, Config{MaxSendMsgSize: 1000})
	if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{ResponseSize: 900}); err != nil {
		t.Fatal(err)
	}
	_, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{ResponseSize: 2000})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("err = %v, want ResourceExhausted", err)
	}
	p.nextResult(t)
	if r := p.nextResult(t); r.Code != codes.ResourceExhausted || !errors.Is(r.Err, ErrMessageTooLarge) {
		t.Fatalf("result %+v", r)
	}
}

// TestLargeHeaders: header blocks larger than a frame are split into
// CONTINUATION frames both ways.
func TestLargeHeaders(t *testing.T) {
	t.Parallel()
	_, c := setup(t, &testBackend{}, Config{})
	big := strings.Repeat("0123456789abcdef", 3*1024) // 48 KiB
	ctx := metadata.AppendToOutgoingContext(ctxT(t, 5*time.Second), "x-echo-huge", big)
	var hdr metadata.MD
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-echo-huge"); len(got) != 1 || got[0] != big {
		t.Fatal("48 KiB header not echoed intact")
	}
}

// TestHeaderTableSizeZero: meshd's HPACK encoder honours a client's
// SETTINGS_HEADER_TABLE_SIZE of 0.
func TestHeaderTableSizeZero(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	p := startProxy(t, b.addr, Config{})
	rc := h2raw.New(t, p.addr, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	rc.Next("SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
	for id := uint32(1); id <= 5; id += 2 {
		rc.Headers(id, h2raw.Request("/grpc.testing.TestService/UnaryCall"), false)
		_ = rc.Write(func(fr *http2.Framer) error {
			return fr.WriteData(id, true, h2raw.MarshalMessage(t, &testpb.SimpleRequest{}))
		})
		rc.Next("trailers", func(f http2.Frame) bool {
			h, ok := f.(*http2.MetaHeadersFrame)
			return ok && h.StreamID == id && h.StreamEnded()
		})
	}
}

// TestChaos runs many overlapping calls of every shape with random client
// cancellations and deadlines, then checks that meshd released everything
// (streams, buffers) and that every Result was reported once.
func TestChaos(t *testing.T) {
	t.Parallel()
	b := &testBackend{
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			select {
			case <-time.After(time.Duration(req.GetResponseSize()) * time.Microsecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
		},
	}
	p, c := setup(t, b, Config{InitialWindowSize: 65535, ConnWindowSize: 256 << 10})
	rng := rand.New(rand.NewPCG(1, 2))
	const calls = 300
	var wg sync.WaitGroup
	sem := make(chan struct{}, 40)
	var ok, failed atomic.Int64
	for i := 0; i < calls; i++ {
		kind := rng.IntN(4)
		delay := time.Duration(rng.IntN(3000)) * time.Microsecond
		size := rng.IntN(100 << 10)
		cancelAfter := time.Duration(rng.IntN(100000)) * time.Microsecond
		useDeadline := rng.IntN(2) == 0
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var ctx context.Context
			var cancel context.CancelFunc
			if useDeadline {
				ctx, cancel = context.WithTimeout(context.Background(), cancelAfter)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
				timer := time.AfterFunc(cancelAfter, cancel)
				defer timer.Stop()
			}
			defer cancel()
			var err error
			switch kind {
			case 0:
				_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: payload(size), ResponseSize: int32(delay / time.Microsecond)})
			case 1:
				var s testgrpc.TestService_StreamingOutputCallClient
				s, err = c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params(size, size/2, 7)})
				for err == nil {
					_, err = s.Recv()
				}
				if err == io.EOF {
					err = nil
				}
			case 2:
				var s testgrpc.TestService_FullDuplexCallClient
				s, err = c.FullDuplexCall(ctx)
				for j := 0; err == nil && j < 5; j++ {
					if err = s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: params(size / 5), Payload: payload(size / 5)}); err == nil {
						_, err = s.Recv()
					} else if err == io.EOF {
						_, err = s.Recv() // the stream ended: Recv has the status
					}
				}
				if err == nil {
					_ = s.CloseSend()
					if _, err = s.Recv(); err == io.EOF {
						err = nil
					}
				}
			case 3:
				var s testgrpc.TestService_StreamingInputCallClient
				s, err = c.StreamingInputCall(ctx)
				for j := 0; err == nil && j < 5; j++ {
					err = s.Send(&testpb.StreamingInputCallRequest{Payload: payload(size / 5)})
				}
				if err == nil || err == io.EOF {
					_, err = s.CloseAndRecv() // after io.EOF from Send, this has the status
				}
			}
			if err == nil {
				ok.Add(1)
				return
			}
			if code := status.Code(err); code != codes.Canceled && code != codes.DeadlineExceeded {
				t.Errorf("call %d: unexpected error %v", kind, err)
			}
			failed.Add(1)
		}()
	}
	wg.Wait()
	testkit.WaitFor(t, 5*time.Second, "all streams to end", func() bool {
		st := p.srv.Stats()
		return st.ActiveStreams == 0 && st.UpstreamStreams == 0 && st.BufferedBytes == 0
	})
	// Calls cancelled before their HEADERS left the client never reached
	// meshd; every stream that did must have exactly one Result. Target.Done
	// runs last in call.end, just after the stream has left the counters
	// waited on above: give a late Result a moment.
	total := p.srv.Stats().StreamsTotal
	reported := func() int64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return int64(len(p.results))
	}
	testkit.Poll(5*time.Second, 0, func() bool { return reported() >= total })
	if n := reported(); n != total {
		t.Errorf("%d Results reported for %d streams", n, total)
	}
	// The client connection must still work.
	resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(77)})
	if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), payload(77).GetBody()) {
		t.Fatalf("call after chaos: %v", err)
	}
	t.Logf("%d calls succeeded, %d cancelled or timed out", ok.Load(), failed.Load())
}

// TestUpstreamConnections: the Pool keeps ConnsPerBackend connections and
// opens more when the backend's MAX_CONCURRENT_STREAMS is reached.
func TestUpstreamConnections(t *testing.T) {
	t.Parallel()
	t.Run("stream limit", func(t *testing.T) {
		t.Parallel()
		const calls = 6
		var entered atomic.Int32
		release := make(chan struct{})
		b := &testBackend{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			entered.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &testpb.SimpleResponse{}, nil
		}}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer(grpc.MaxConcurrentStreams(2))
		testgrpc.RegisterTestServiceServer(gs, b)
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = gs.Serve(ln)
		}()
		t.Cleanup(func() { gs.Stop(); <-served })
		p := startProxy(t, ln.Addr().String(), Config{ConnsPerBackend: 1})
		_, c := dial(t, p.addr)
		errc := make(chan error, calls)
		for i := 0; i < calls; i++ {
			go func() {
				_, err := c.UnaryCall(ctxT(t, 10*time.Second), &testpb.SimpleRequest{})
				errc <- err
			}()
		}
		testkit.WaitFor(t, 5*time.Second, "all calls to reach the backend", func() bool { return entered.Load() == calls })
		if n := p.srv.Stats().UpstreamConns; n < calls/2 {
			t.Errorf("UpstreamConns = %d, want >= %d for %d streams at 2 per connection", n, calls/2, calls)
		}
		close(release)
		for i := 0; i < calls; i++ {
			if err := <-errc; err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("conns per backend", func(t *testing.T) {
		t.Parallel()
		b := startBackend(t, &testBackend{})
		p := startProxy(t, b.addr, Config{ConnsPerBackend: 3})
		_, c := dial(t, p.addr)
		testkit.WaitFor(t, 5*time.Second, "3 backend connections", func() bool {
			if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			return p.srv.Stats().UpstreamConns == 3
		})
		for i := 0; i < 20; i++ {
			if _, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		if n := p.srv.Stats().UpstreamConns; n != 3 {
			t.Fatalf("UpstreamConns = %d, want 3", n)
		}
	})
}

// TestCustomDial: Config.Dial opens backend connections, and a connection
// without a raw file descriptor (as a TLS connection would be) works, on
// the writer goroutine alone.
func TestCustomDial(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	var dials atomic.Int32
	cfg := Config{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return struct{ net.Conn }{nc}, nil // hides syscall.Conn and CloseWrite
	}}
	p := startProxy(t, b.addr, cfg)
	_, c := dial(t, p.addr)
	for _, n := range []int{10, 200 << 10} {
		resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(n), ResponseSize: int32(n)})
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), n)
	}
	if dials.Load() == 0 {
		t.Fatal("Config.Dial was not used")
	}
}

// TestServeConn: connections handed over with ServeConn (as a TLS or
// SO_ORIGINAL_DST listener does), here without a raw file descriptor, are
// served; cancelling ServeConn's ctx closes the connection.
func TestServeConn(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	srv := NewServer(DirectorFunc(func(context.Context, *Request) (Target, error) {
		return Target{Addr: b.addr}, nil
	}), Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		srv.ServeConn(ctx, struct{ net.Conn }{nc})
	}()
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		<-served
		_ = srv.Close()
	})
	cc, c := dial(t, ln.Addr().String())
	for _, n := range []int{10, 300 << 10} {
		resp, err := c.UnaryCall(ctxT(t, 5*time.Second), &testpb.SimpleRequest{Payload: payload(n), ResponseSize: int32(n)})
		if err != nil {
			t.Fatal(err)
		}
		checkBody(t, resp.GetPayload(), n)
	}
	cancel()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return after its ctx was cancelled")
	}
	_ = cc.Close()
}
