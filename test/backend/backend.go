package backend

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed calls
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Health modes for WithHealth.
const (
	HealthWatch = "watch" // grpc-go's health server: Watch and Check (default)
	HealthCheck = "check" // only Check; Watch answers UNIMPLEMENTED
	HealthNone  = "none"  // no health service at all
)

// Backend is one running test server. Its methods are safe for concurrent use.
type Backend struct {
	// Name is sent in the x-backend response header.
	Name string
	// Addr is the host:port it listens on.
	Addr string
	// Health is the health server; set statuses on it to flip health.
	// Nil with WithHealth(HealthNone).
	Health *health.Server

	srv       *grpc.Server
	lis       net.Listener
	done      chan struct{}
	calls     atomic.Int64
	cancelled atomic.Int64
	fail      atomic.Int32 // codes.Code+1 when every call must fail
	// failEvery and failEveryCode make every n-th call fail (FailEvery).
	failEvery     atomic.Int64
	failEveryCode atomic.Int32
	failCount     atomic.Int64
	lastMD        atomic.Pointer[metadata.MD]
	delay         atomic.Int64 // SetDelay, in nanoseconds
	idMu          sync.Mutex
	ids           map[string]int // calls per x-call-id value
	stopOnce      sync.Once
	testpb.UnimplementedTestServiceServer
}

type options struct {
	addr       string
	health     string
	creds      credentials.TransportCredentials
	serverOpts []grpc.ServerOption
	register   []func(*grpc.Server)
	noTest     bool
}

// Option configures Start.
type Option func(*options)

// WithAddr listens on addr (default 127.0.0.1:0); use it to restart a backend
// on the port it had.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithHealth chooses the health service flavour (HealthWatch by default).
func WithHealth(mode string) Option { return func(o *options) { o.health = mode } }

// WithTLS serves TLS with cfg.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.creds = credentials.NewTLS(cfg) }
}

// WithServerOptions adds grpc.Server options.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// WithRegister registers more services (reflection, another test
// service) on the backend's server before it serves.
func WithRegister(f func(*grpc.Server)) Option {
	return func(o *options) { o.register = append(o.register, f) }
}

// WithoutTestService leaves grpc.testing.TestService out, for a backend
// that serves other services only (WithRegister).
func WithoutTestService() Option { return func(o *options) { o.noTest = true } }

// Start runs a backend until Stop.
func Start(name string, opts ...Option) (*Backend, error) {
	o := options{addr: "127.0.0.1:0", health: HealthWatch}
	for _, f := range opts {
		f(&o)
	}
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	sopts := append([]grpc.ServerOption{grpc.MaxRecvMsgSize(64 << 20), grpc.MaxSendMsgSize(64 << 20)}, o.serverOpts...)
	if o.creds != nil {
		sopts = append(sopts, grpc.Creds(o.creds))
	}
	b := &Backend{Name: name, Addr: lis.Addr().String(), srv: grpc.NewServer(sopts...), lis: lis, done: make(chan struct{})}
	if !o.noTest {
		testpb.RegisterTestServiceServer(b.srv, b)
	}
	for _, f := range o.register {
		f(b.srv)
	}
	switch o.health {
	case HealthWatch:
		b.Health = health.NewServer()
		healthpb.RegisterHealthServer(b.srv, b.Health)
	case HealthCheck:
		b.Health = health.NewServer()
		healthpb.RegisterHealthServer(b.srv, checkOnly{b.Health})
	case HealthNone:
	default:
		lis.Close()
		return nil, fmt.Errorf("backend %s: unknown health mode %q", name, o.health)
	}
	go func() {
		defer close(b.done)
		// Serve returns when Stop closes the listener; its error then says so.
		_ = b.srv.Serve(lis)
	}()
	return b, nil
}

// checkOnly serves Health/Check but not Watch, like older servers.
type checkOnly struct{ s *health.Server }

func (c checkOnly) Check(ctx context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return c.s.Check(ctx, r)
}
func (c checkOnly) List(ctx context.Context, r *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	return c.s.List(ctx, r)
}
func (checkOnly) Watch(*healthpb.HealthCheckRequest, grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	return status.Error(codes.Unimplemented, "Watch is not implemented")
}

// Stop stops the server at once (in-flight calls fail), like a killed process.
func (b *Backend) Stop() {
	b.stopOnce.Do(func() {
		if b.Health != nil {
			b.Health.Shutdown()
		}
		b.srv.Stop()
		<-b.done
	})
}

// GracefulStop drains in-flight calls, then stops.
func (b *Backend) GracefulStop() {
	b.stopOnce.Do(func() {
		b.srv.GracefulStop()
		<-b.done
	})
}

// SetServing flips the whole-server and every named service's health.
func (b *Backend) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	b.Health.SetServingStatus("", st)
}

// FailAll makes every call fail with code (codes.OK restores normal service).
func (b *Backend) FailAll(code codes.Code) {
	if code == codes.OK {
		b.fail.Store(0)
		return
	}
	b.fail.Store(int32(code) + 1)
}

// FailEvery makes every n-th call fail with code (n = 2: half of them),
// a backend that is sick rather than down; n <= 0 restores normal service.
func (b *Backend) FailEvery(n int, code codes.Code) {
	b.failEveryCode.Store(int32(code))
	b.failEvery.Store(int64(max(n, 0)))
}

// SetDelay makes every call wait d before it answers (as x-delay does,
// and added to it): a slow backend. 0 restores normal service.
func (b *Backend) SetDelay(d time.Duration) { b.delay.Store(int64(d)) }

// CallIDs counts the calls this backend started per value of their
// x-call-id metadata (calls without it are not counted): how many
// attempts of one call reached it.
func (b *Backend) CallIDs() map[string]int {
	b.idMu.Lock()
	defer b.idMu.Unlock()
	return maps.Clone(b.ids)
}

// Calls is the number of calls this backend has started.
func (b *Backend) Calls() int64 { return b.calls.Load() }

// Cancelled is the number of calls whose context was cancelled while the
// backend was working on them (client cancel or deadline at the backend).
func (b *Backend) Cancelled() int64 { return b.cancelled.Load() }

// LastMetadata is the request metadata of the most recent call.
func (b *Backend) LastMetadata() metadata.MD {
	if p := b.lastMD.Load(); p != nil {
		return *p
	}
	return nil
}

// begin handles the metadata-driven parts common to every method: it counts
// the call, echoes x-echo-* into the headers, applies x-delay and decides the
// failure, if any, the method must return.
func (b *Backend) begin(ctx context.Context, setHeader func(metadata.MD) error, sendHeader func(metadata.MD) error, setTrailer func(metadata.MD)) error {
	b.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	cp := md.Copy()
	b.lastMD.Store(&cp)
	if id := first(md, "x-call-id"); id != "" {
		b.idMu.Lock()
		if b.ids == nil {
			b.ids = make(map[string]int)
		}
		b.ids[id]++
		b.idMu.Unlock()
	}

	trailersOnly := first(md, "x-trailers-only") == "1"
	if !trailersOnly {
		hdr := metadata.Pairs("x-backend", b.Name)
		tr := metadata.Pairs("x-backend", b.Name, "x-seen-keys", seenKeys(md))
		for k, v := range md {
			if strings.HasPrefix(k, "x-echo-") {
				hdr[k] = v
				tr[k] = v
			}
		}
		for _, pad := range [...]struct {
			key string
			md  metadata.MD
			bin bool
		}{{"x-pad-header", hdr, false}, {"x-pad-header-bin", hdr, true}, {"x-pad-trailer", tr, false}, {"x-pad-trailer-bin", tr, true}} {
			if v := first(md, pad.key); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return status.Errorf(codes.InvalidArgument, "bad %s %q", pad.key, v)
				}
				if pad.bin {
					pad.md["x-pad-bin"] = []string{string(PadBytes(n))}
				} else {
					pad.md["x-pad"] = []string{PadValue(n)}
				}
			}
		}
		if err := setHeader(hdr); err != nil {
			if ctx.Err() != nil {
				// Cancelled before the backend got this far: grpc-go
				// refuses header metadata on a stream already reset.
				b.cancelled.Add(1)
			}
			return err
		}
		setTrailer(tr)
		if first(md, "x-header-first") == "1" {
			if err := sendHeader(nil); err != nil {
				return err
			}
		}
	}
	dur := time.Duration(b.delay.Load())
	if d := first(md, "x-delay"); d != "" {
		x, err := time.ParseDuration(d)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "bad x-delay %q", d)
		}
		dur += x
	}
	if dur > 0 {
		t := time.NewTimer(dur)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			b.cancelled.Add(1)
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if c := b.fail.Load(); c > 0 {
		return status.Errorf(codes.Code(c-1), "backend %s fails every call", b.Name)
	}
	if n := b.failEvery.Load(); n > 0 && b.failCount.Add(1)%n == 0 {
		return status.Errorf(codes.Code(b.failEveryCode.Load()), "backend %s fails every %d calls", b.Name, n)
	}
	if f := first(md, "x-fail"); f != "" {
		code, err := parseCode(f)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		msg := first(md, "x-fail-message")
		if m := first(md, "x-fail-message-bin"); m != "" {
			msg = m // unicode messages cannot travel in ASCII metadata
		}
		st := status.New(code, msg)
		if first(md, "x-fail-details") == "1" {
			st, _ = st.WithDetails(&errdetails.ErrorInfo{Reason: "TEST", Domain: "meshd.test", Metadata: map[string]string{"backend": b.Name}})
		}
		return st.Err()
	}
	return nil
}

// PadValue is the x-pad metadata value of n bytes (x-pad-header,
// x-pad-trailer): printable ASCII in a pattern that shows any byte moved
// or lost.
func PadValue(n int) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[(i*7+i/len(alphabet))%len(alphabet)]
	}
	return string(b)
}

// PadBytes is the x-pad-bin metadata value of n bytes (x-pad-header-bin,
// x-pad-trailer-bin): every byte value, base64 on the wire.
func PadBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i/256)
	}
	return b
}

// seenKeys lists the request's metadata keys, sorted, so a test can check
// what a proxy added or dropped.
func seenKeys(md metadata.MD) string {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}

func parseCode(s string) (codes.Code, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return codes.Code(n), nil
	}
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		return 0, fmt.Errorf("bad x-fail %q", s)
	}
	return c, nil
}

func (b *Backend) unaryBegin(ctx context.Context) error {
	set := func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }
	send := func(md metadata.MD) error { return grpc.SendHeader(ctx, md) }
	return b.begin(ctx, set, send, func(md metadata.MD) { grpc.SetTrailer(ctx, md) })
}

func (b *Backend) streamBegin(ss grpc.ServerStream) error {
	return b.begin(ss.Context(), ss.SetHeader, ss.SendHeader, ss.SetTrailer)
}

// EmptyCall answers an empty message.
func (b *Backend) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if err := b.unaryBegin(ctx); err != nil {
		return nil, err
	}
	return &testpb.Empty{}, nil
}

// UnaryCall echoes the payload, or answers ResponseSize bytes, or the
// requested ResponseStatus.
func (b *Backend) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := b.unaryBegin(ctx); err != nil {
		return nil, err
	}
	if s := in.GetResponseStatus(); s != nil && s.GetCode() != 0 {
		return nil, status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	body := in.GetPayload().GetBody()
	if in.GetResponseSize() > 0 {
		body = make([]byte, in.GetResponseSize())
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: body}, ServerId: b.Name}, nil
}

// StreamingOutputCall sends one message per ResponseParameters entry.
func (b *Backend) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, ss grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	if err := b.streamBegin(ss); err != nil {
		return err
	}
	for _, p := range in.GetResponseParameters() {
		if err := b.pause(ss.Context(), p.GetIntervalUs()); err != nil {
			return err
		}
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	if s := in.GetResponseStatus(); s != nil && s.GetCode() != 0 {
		return status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	return nil
}

func (b *Backend) pause(ctx context.Context, us int32) error {
	if us <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(us) * time.Microsecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		b.cancelled.Add(1)
		return status.FromContextError(ctx.Err()).Err()
	}
}

// StreamingInputCall sums the sizes of every request payload.
func (b *Backend) StreamingInputCall(ss grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	if err := b.streamBegin(ss); err != nil {
		return err
	}
	var n int32
	for {
		m, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			return ss.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		n += int32(len(m.GetPayload().GetBody()))
	}
}

// FullDuplexCall answers each request as it arrives; after the client
// half-closes it may keep sending (the request's ResponseParameters beyond
// the first are sent after the half-close), exercising half-close.
func (b *Backend) FullDuplexCall(ss grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	if err := b.streamBegin(ss); err != nil {
		return err
	}
	var after []*testpb.ResponseParameters
	for {
		m, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		ps := m.GetResponseParameters()
		if len(ps) == 0 {
			ps = []*testpb.ResponseParameters{{Size: int32(len(m.GetPayload().GetBody()))}}
		}
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, ps[0].GetSize())}}); err != nil {
			return err
		}
		after = append(after, ps[1:]...)
		if s := m.GetResponseStatus(); s != nil && s.GetCode() != 0 {
			return status.Error(codes.Code(s.GetCode()), s.GetMessage())
		}
	}
	for _, p := range after {
		if err := b.pause(ss.Context(), p.GetIntervalUs()); err != nil {
			return err
		}
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

// HalfDuplexCall buffers every request, then answers them in order.
func (b *Backend) HalfDuplexCall(ss grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	if err := b.streamBegin(ss); err != nil {
		return err
	}
	var msgs []*testpb.StreamingOutputCallRequest
	for {
		m, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	for _, m := range msgs {
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: m.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}
