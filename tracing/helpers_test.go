package tracing_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/tracing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 5 * time.Second

// The caller's span context in tests that continue a trace.
const (
	callerTrace   = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan    = "00f067aa0ba902b7"
	sampledParent = "00-" + callerTrace + "-" + callerSpan + "-01"
)

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

// shutdown shuts p down, failing the test on error. Afterwards the receiver
// holds every span p will ever export.
func shutdown(t testing.TB, p *tracing.Provider) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// attempt is one upstream attempt of a traced call.
type attempt struct {
	endpoint string
	code     codes.Code
	msg      string
}

// tracedCall is what the director does for one call: a SERVER span from the
// inbound headers, its route, and a CLIENT span per attempt, each ended
// before the next starts, then the SERVER span ended with the last
// attempt's outcome. It returns the spans (server first) and the header
// fields injected into each attempt.
func tracedCall(p *tracing.Provider, method string, in propagation.TextMapCarrier, attempts ...attempt) ([]trace.Span, []propagation.MapCarrier) {
	ctx, server := p.StartServer(context.Background(), method, in, "127.0.0.1:50000")
	tracing.SetRoute(ctx, "route-a", "cluster-a")
	spans := []trace.Span{server}
	var outs []propagation.MapCarrier
	last := attempt{code: codes.Unavailable, msg: "no attempt"}
	for i, a := range attempts {
		out := propagation.MapCarrier{}
		_, client := p.StartClient(ctx, method, a.endpoint, i+1, out)
		tracing.EndSpan(client, a.code, a.msg)
		spans, outs, last = append(spans, client), append(outs, out), a
	}
	tracing.EndSpan(server, last.code, last.msg)
	return spans, outs
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

// byID returns the exported span whose id is that of sc, or nil.
func byID(spans []*tracepb.Span, sc trace.SpanContext) *tracepb.Span {
	for _, s := range spans {
		if spanID(s) == sc.SpanID().String() {
			return s
		}
	}
	return nil
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

// wantAttrs checks string and int attributes of s; a nil value means the
// attribute must be absent.
func wantAttrs(t testing.TB, s *tracepb.Span, want map[string]any) {
	t.Helper()
	for k, w := range want {
		v := attr(s, k)
		if w == nil {
			if v != nil {
				t.Errorf("%s span %q: attribute %s = %v, want none", s.GetKind(), s.GetName(), k, v)
			}
			continue
		}
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
