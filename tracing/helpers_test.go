package tracing_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/tracing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 5 * time.Second

// newProvider returns an enabled Provider exporting to addr with test-sized
// timeouts; it is shut down by t.Cleanup.
func newProvider(t testing.TB, addr string, opts ...tracing.Option) *tracing.Provider {
	t.Helper()
	base := []tracing.Option{
		tracing.WithEndpoint(addr),
		tracing.WithBatchTimeout(10 * time.Millisecond),
		tracing.WithExportTimeout(time.Second),
	}
	p, err := tracing.New(context.Background(), append(base, opts...)...)
	if err != nil {
		t.Fatalf("tracing.New: %v", err)
	}
	if !p.Enabled() {
		t.Fatal("provider with an endpoint is not enabled")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_ = p.Shutdown(ctx) // tests that care call Shutdown themselves
	})
	return p
}

// rawCodec passes message bytes through untouched, as meshd's transparent
// handler does.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// backend is a real gRPC server implementing grpc.health.v1.Health/Check. It
// answers with code (OK means SERVING) and keeps the metadata of every call.
type backend struct {
	healthpb.UnimplementedHealthServer
	addr string
	code codes.Code

	mu sync.Mutex
	md []metadata.MD
}

func startBackend(t testing.TB, code codes.Code, opts ...grpc.ServerOption) *backend {
	t.Helper()
	b := &backend{code: code}
	b.addr = serve(t, grpc.NewServer(opts...), func(s *grpc.Server) { healthpb.RegisterHealthServer(s, b) })
	return b
}

func (b *backend) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	b.mu.Lock()
	b.md = append(b.md, md)
	b.mu.Unlock()
	if b.code != codes.OK {
		return nil, status.Error(b.code, "backend says "+b.code.String())
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (b *backend) calls() []metadata.MD {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]metadata.MD(nil), b.md...)
}

// serve registers services on s, serves it on a loopback port and stops it
// (waiting for Serve to return) in t.Cleanup.
func serve(t testing.TB, s *grpc.Server, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	if register != nil {
		register(s)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String()
}

func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// endSignal is a stats.Handler installed after the tracing handler; as
// grpc-go runs handlers in order, a receive from it means the tracing
// handler has ended that call's span.
type endSignal chan struct{}

func (e endSignal) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (e endSignal) HandleRPC(_ context.Context, rs stats.RPCStats) {
	if _, ok := rs.(*stats.End); ok {
		e <- struct{}{}
	}
}

func (e endSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (e endSignal) HandleConn(context.Context, stats.ConnStats) {}

func (e endSignal) wait(t testing.TB, n int) {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for i := range n {
		select {
		case <-e:
		case <-timer.C:
			t.Fatalf("%d of %d calls ended at the proxy", i, n)
		}
	}
}

// startProxy runs a miniature meshd: a transparent gRPC proxy whose handler
// copies inbound metadata minus the trace headers into a context derived
// from the inbound one, records its route, and tries upstreams in order, one
// attempt each, moving on after Unavailable. It returns the proxy's address
// and the signal of its ended calls.
func startProxy(t testing.TB, p *tracing.Provider, upstreams ...string) (string, endSignal) {
	t.Helper()
	conns := make([]*grpc.ClientConn, len(upstreams))
	for i, up := range upstreams {
		var opts []grpc.DialOption
		if p.Enabled() {
			opts = append(opts, grpc.WithStatsHandler(p.ClientHandler()))
		}
		conns[i] = dial(t, up, opts...)
	}
	handler := func(_ any, ss grpc.ServerStream) error {
		ctx := ss.Context()
		method, _ := grpc.MethodFromServerStream(ss)
		var req []byte
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		in, _ := metadata.FromIncomingContext(ctx)
		out := metadata.MD{}
		for k, v := range in {
			switch {
			case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"),
				k == "content-type", k == "user-agent",
				k == "traceparent", k == "tracestate", k == "baggage":
				continue
			}
			out[k] = v
		}
		tracing.SetRoute(ctx, "test-route", "test-cluster")
		var err error
		for i, conn := range conns {
			actx := tracing.WithAttempt(metadata.NewOutgoingContext(ctx, out.Copy()), upstreams[i], i+1)
			var resp []byte
			err = conn.Invoke(actx, method, &req, &resp, grpc.ForceCodec(rawCodec{}))
			if status.Code(err) == codes.Unavailable {
				continue
			}
			if err != nil {
				return err
			}
			return ss.SendMsg(&resp)
		}
		return err
	}
	ended := make(endSignal, 64)
	opts := []grpc.ServerOption{grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(handler)}
	if p.Enabled() {
		opts = append(opts, grpc.StatsHandler(p.ServerHandler()))
	}
	opts = append(opts, grpc.StatsHandler(ended))
	return serve(t, grpc.NewServer(opts...), nil), ended
}

// check calls Health/Check on addr with the given outgoing metadata pairs.
func check(t testing.TB, addr string, kv ...string) error {
	t.Helper()
	conn := dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// Span inspection.

func spanID(s *tracepb.Span) string   { return hex.EncodeToString(s.GetSpanId()) }
func traceID(s *tracepb.Span) string  { return hex.EncodeToString(s.GetTraceId()) }
func parentID(s *tracepb.Span) string { return hex.EncodeToString(s.GetParentSpanId()) }

func byKind(spans []*tracepb.Span, kind tracepb.Span_SpanKind) []*tracepb.Span {
	var out []*tracepb.Span
	for _, s := range spans {
		if s.GetKind() == kind {
			out = append(out, s)
		}
	}
	return out
}

func attr(s *tracepb.Span, key string) *commonpb.AnyValue {
	return attrOf(s.GetAttributes(), key)
}

func attrOf(kvs []*commonpb.KeyValue, key string) *commonpb.AnyValue {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

// wantAttrs checks string and int attributes of s.
func wantAttrs(t testing.TB, s *tracepb.Span, want map[string]any) {
	t.Helper()
	for k, w := range want {
		v := attr(s, k)
		if v == nil {
			t.Errorf("%s span %q: attribute %s missing", s.GetKind(), s.GetName(), k)
			continue
		}
		switch w := w.(type) {
		case string:
			if got := v.GetStringValue(); got != w {
				t.Errorf("%s span: %s = %q, want %q", s.GetKind(), k, got, w)
			}
		case int:
			if got, ok := v.GetValue().(*commonpb.AnyValue_IntValue); !ok || got.IntValue != int64(w) {
				t.Errorf("%s span: %s = %v, want int %d", s.GetKind(), k, v, w)
			}
		default:
			t.Fatalf("wantAttrs: unsupported type %T", w)
		}
	}
}

// traceparent parses a W3C traceparent into trace id, parent id and flags.
func traceparent(t testing.TB, tp string) (tid, pid, flags string) {
	t.Helper()
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		t.Fatalf("malformed traceparent %q", tp)
	}
	return parts[1], parts[2], parts[3]
}

// one returns the only value of key in md, failing unless there is exactly one.
func one(t testing.TB, md metadata.MD, key string) string {
	t.Helper()
	v := md.Get(key)
	if len(v) != 1 {
		t.Fatalf("backend got %s = %q, want exactly one value", key, v)
	}
	return v[0]
}

// syncBuffer is a bytes.Buffer safe for a slog handler and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func slogTo(w *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func countLines(s, substr string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}
