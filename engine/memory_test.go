package engine

import (
	"io"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
)

func TestBufPoolClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		maxFrame int
		n        int
		want     int // buffer length handed out
	}{
		{16 << 10, 1, 1 << 10},
		{16 << 10, 1 << 10, 1 << 10},
		{16 << 10, 1<<10 + 1, 2 << 10},
		{16 << 10, 1029, 2 << 10}, // a 1 KiB gRPC message in one frame
		{16 << 10, 8<<10 + 1, 16 << 10},
		{16 << 10, 16 << 10, 16 << 10},
		{20000, 16 << 10, 16 << 10},
		{20000, 16<<10 + 1, 20000},
		{20000, 20000, 20000},
		{1<<24 - 1, 1<<23 + 1, 1<<24 - 1},
		{1<<24 - 1, 1 << 23, 1 << 23},
	} {
		t.Run(strconv.Itoa(tc.maxFrame)+"/"+strconv.Itoa(tc.n), func(t *testing.T) {
			t.Parallel()
			p := newBufPool(tc.maxFrame)
			if got := p.sizes[p.class(tc.n)]; got != tc.want {
				t.Fatalf("class for %d bytes = %d bytes, want %d", tc.n, got, tc.want)
			}
			if tc.want > 64<<10 {
				return // do not allocate huge buffers
			}
			b := p.get(tc.n)
			if len(*b) != tc.want {
				t.Fatalf("get(%d) = %d bytes, want %d", tc.n, len(*b), tc.want)
			}
			p.put(b)
			// A buffer of a size no class has is dropped, never handed out
			// for a class it does not fill.
			odd := make([]byte, tc.want-1)
			p.put(&odd)
			if got := p.get(tc.want); len(*got) < tc.want {
				t.Fatalf("get(%d) after put of %d bytes = %d bytes", tc.want, len(odd), len(*got))
			}
		})
	}
}

// backlog returns the DATA bytes queued on every client and backend
// connection of s and the size of the pooled buffers holding them: the heap
// meshd's backlog takes. Each connection is read under its lock, so the two
// agree while data keeps arriving.
func backlog(s *Server) (queued, held int64) {
	var conns []*conn
	s.mu.Lock()
	for sc := range s.conns {
		conns = append(conns, &sc.conn)
	}
	s.mu.Unlock()
	s.pool.mu.Lock()
	for uc := range s.pool.all {
		conns = append(conns, &uc.conn)
	}
	s.pool.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		queued += c.queued
		seen := map[*[]byte]bool{}
		for _, st := range c.streams {
			for i := st.qh; i < len(st.q); i++ {
				if b := st.q[i].buf; b != nil && !seen[b] {
					seen[b] = true
					held += int64(len(*b))
				}
			}
		}
		c.mu.Unlock()
	}
	return queued, held
}

// TestSmallFrameBacklogCompact: when a peer reads a stream of small
// messages slower than the other side sends them, the data meshd holds for
// it takes about its own size in memory, not one max-frame-size buffer per
// frame (which made a backlog of 1 KiB messages cost 16 times its size).
// The stream is then read to the end, byte-exact, while meshd keeps packing
// DATA into buffers the writer is part-way through. Both directions: a slow
// client (server stream) and a slow backend (client stream).
func TestSmallFrameBacklogCompact(t *testing.T) {
	t.Parallel()
	const (
		window = 64 << 10 // the slow peer's fixed windows (no BDP growth)
		msg    = 1 << 10
		count  = 800 // ~0.8 MiB: within meshd's 1 MiB stream window
	)
	for _, tc := range []struct {
		name string
		// run drives the call to its end, calling check once the backlog
		// is built; it returns the proxy.
		run func(t *testing.T, check func(p *proxy)) *proxy
	}{
		{"slow client", func(t *testing.T, check func(p *proxy)) *proxy {
			var sent atomic.Int64
			b := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
				for i := 0; i < count; i++ {
					if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(msg)}); err != nil {
						return err
					}
					sent.Add(1)
				}
				return nil
			}}
			p, c := setup(t, b, Config{}, grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
			s, err := c.StreamingOutputCall(ctxT(t, 20*time.Second), &testpb.StreamingOutputCallRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, 5*time.Second, "the backend to send every message", func() bool { return sent.Load() == count })
			check(p)
			for i := 1; i < count; i++ {
				resp, err := s.Recv()
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				checkBody(t, resp.GetPayload(), msg)
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("Recv = %v, want EOF", err)
			}
			return p
		}},
		{"slow backend", func(t *testing.T, check func(p *proxy)) *proxy {
			release := make(chan struct{})
			b := &testBackend{streamIn: func(s testgrpc.TestService_StreamingInputCallServer) error {
				<-release
				n := 0
				for {
					req, err := s.Recv()
					if err == io.EOF {
						return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
					}
					if err != nil {
						return err
					}
					checkBody(t, req.GetPayload(), msg)
					n++
				}
			}}
			startBackend(t, b, grpc.InitialWindowSize(window), grpc.InitialConnWindowSize(window))
			p := startProxy(t, b.addr, Config{})
			_, c := dial(t, p.addr)
			s, err := c.StreamingInputCall(ctxT(t, 20*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < count; i++ {
				if err := s.Send(&testpb.StreamingInputCallRequest{Payload: payload(msg)}); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}
			check(p)
			close(release)
			resp, err := s.CloseAndRecv()
			if err != nil || resp.GetAggregatedPayloadSize() != count {
				t.Fatalf("CloseAndRecv = %v, %v; want %d messages", resp, err, count)
			}
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := tc.run(t, func(p *proxy) {
				testkit.WaitFor(t, 5*time.Second, "meshd to buffer the backlog", func() bool {
					return p.srv.Stats().BufferedBytes >= (count*msg-window)/2
				})
				queued, held := backlog(p.srv)
				// Beyond the queued bytes, only the spare room of the newest
				// buffer and the already written front of the oldest are held.
				if bound := queued + 2*DefaultMaxFrameSize; held > bound {
					t.Fatalf("meshd holds %d bytes of buffers for %d bytes of queued data, want <= %d", held, queued, bound)
				}
				t.Logf("backlog of %d bytes held in %d bytes of buffers", queued, held)
			})
			testkit.WaitFor(t, 2*time.Second, "buffers to drain", func() bool { return p.srv.Stats().BufferedBytes == 0 })
		})
	}
}
