package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

func TestMain(m *testing.M) {
	if backend := os.Getenv(proxyProcessEnv); backend != "" {
		// Re-executed by a benchmark as a stand-alone proxy process.
		runProxyProcess(backend)
		return
	}
	goleak.VerifyTestMain(m)
}

// proxyProcessEnv names the backend a re-executed test binary proxies to.
const proxyProcessEnv = "H2PROXY_BENCH_BACKEND"

// runProxyProcess serves h2proxy in front of backend, prints its address on
// stdout and exits when stdin closes (its parent is done or gone).
func runProxyProcess(backend string) {
	s := NewServer(DirectorFunc(func(context.Context, *Request) (Target, error) {
		return Target{Addr: backend}, nil
	}), Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	// H2PROXY_BENCH_CPUPROFILE=file profiles the proxy process alone.
	if path := os.Getenv("H2PROXY_BENCH_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			defer f.Close() // runs after StopCPUProfile has flushed
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	fmt.Println(ln.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = s.Close()
	<-done
}

// testBackend is a real grpc-go TestService server. Each handler has a default
// (echo-like) behaviour that a test may replace.
type testBackend struct {
	testgrpc.UnimplementedTestServiceServer
	addr string

	unary      func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error)
	streamOut  func(*testpb.StreamingOutputCallRequest, testgrpc.TestService_StreamingOutputCallServer) error
	streamIn   func(testgrpc.TestService_StreamingInputCallServer) error
	fullDuplex func(testgrpc.TestService_FullDuplexCallServer) error
}

func payload(n int) *testpb.Payload {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return &testpb.Payload{Body: b}
}

// echoMetadata copies incoming metadata named x-echo-* into the response
// header, so tests can check what reached the backend.
func echoMetadata(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		if len(k) > 7 && k[:7] == "x-echo-" {
			out[k] = v
		}
	}
	if len(out) > 0 {
		_ = grpc.SetHeader(ctx, out)
	}
}

func (b *testBackend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if b.unary != nil {
		return b.unary(ctx, req)
	}
	echoMetadata(ctx)
	if s := req.GetResponseStatus(); s != nil && s.GetCode() != 0 {
		return nil, status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	if req.GetResponseSize() > 0 {
		return &testpb.SimpleResponse{Payload: payload(int(req.GetResponseSize()))}, nil
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (b *testBackend) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
	if b.streamOut != nil {
		return b.streamOut(req, s)
	}
	for _, p := range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(int(p.GetSize()))}); err != nil {
			return err
		}
	}
	return nil
}

func (b *testBackend) StreamingInputCall(s testgrpc.TestService_StreamingInputCallServer) error {
	if b.streamIn != nil {
		return b.streamIn(s)
	}
	total := 0
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(req.GetPayload().GetBody())
	}
}

func (b *testBackend) FullDuplexCall(s testgrpc.TestService_FullDuplexCallServer) error {
	if b.fullDuplex != nil {
		return b.fullDuplex(s)
	}
	echoMetadata(s.Context())
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range req.GetResponseParameters() {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(int(p.GetSize()))}); err != nil {
				return err
			}
		}
	}
}

// HalfDuplexCall buffers every request until the client half-closes, then
// answers them all.
func (b *testBackend) HalfDuplexCall(s testgrpc.TestService_HalfDuplexCallServer) error {
	var reqs []*testpb.StreamingOutputCallRequest
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		reqs = append(reqs, req)
	}
	for _, req := range reqs {
		for _, p := range req.GetResponseParameters() {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(int(p.GetSize()))}); err != nil {
				return err
			}
		}
	}
	return nil
}

const bigMsg = 64 << 20

// startBackend serves b on a loopback port until the test ends.
func startBackend(t testing.TB, b *testBackend, opts ...grpc.ServerOption) *testBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	s := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(bigMsg), grpc.MaxSendMsgSize(bigMsg)}, opts...)...)
	testgrpc.RegisterTestServiceServer(s, b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return b
}

// proxy is a running h2proxy Server whose Director sends every stream to
// one backend and records the Results.
type proxy struct {
	srv  *Server
	addr string

	mu      sync.Mutex
	results []Result
	resCh   chan Result
	target  func(*Request) (Target, error) // guarded by mu; set with route
}

// route replaces the proxy's routing function.
func (p *proxy) route(f func(*Request) (Target, error)) {
	p.mu.Lock()
	p.target = f
	p.mu.Unlock()
}

func startProxy(t testing.TB, backendAddr string, cfg Config) *proxy {
	t.Helper()
	p := &proxy{resCh: make(chan Result, 1024)}
	d := DirectorFunc(func(ctx context.Context, req *Request) (Target, error) {
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target != nil {
			tg, err := target(req)
			if err != nil || tg.Done != nil {
				return tg, err
			}
			tg.Done = p.record
			return tg, nil
		}
		return Target{Addr: backendAddr, Done: p.record}, nil
	})
	p.srv = NewServer(d, cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- p.srv.Serve(ln) }()
	t.Cleanup(func() {
		// Clients are closed by now (cleanups run last-in first-out): every
		// stream must have been released.
		released := func() bool {
			st := p.srv.Stats()
			return st.ActiveStreams == 0 && st.UpstreamStreams == 0 && st.BufferedBytes == 0
		}
		if !testkit.Poll(3*time.Second, 0, released) {
			t.Errorf("streams leaked: %+v", p.srv.Stats())
		}
		_ = p.srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if n := p.srv.Stats().BufferedBytes; n != 0 {
			t.Errorf("BufferedBytes after Close = %d, want 0", n)
		}
	})
	return p
}

func (p *proxy) record(r Result) {
	p.mu.Lock()
	p.results = append(p.results, r)
	p.mu.Unlock()
	select {
	case p.resCh <- r:
	default:
	}
}

// nextResult waits for the next Result reported to the Director.
func (p *proxy) nextResult(t testing.TB) Result {
	t.Helper()
	select {
	case r := <-p.resCh:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no Result reported within 5s")
		return Result{}
	}
}

func dial(t testing.TB, addr string, opts ...grpc.DialOption) (*grpc.ClientConn, testgrpc.TestServiceClient) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(bigMsg), grpc.MaxCallSendMsgSize(bigMsg)),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc, testgrpc.NewTestServiceClient(cc)
}

// setup starts a backend, a proxy in front of it and a client of the proxy.
func setup(t testing.TB, b *testBackend, cfg Config, opts ...grpc.DialOption) (*proxy, testgrpc.TestServiceClient) {
	t.Helper()
	startBackend(t, b)
	p := startProxy(t, b.addr, cfg)
	_, c := dial(t, p.addr, opts...)
	return p, c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
