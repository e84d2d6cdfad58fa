package test

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/tracing"
)

// TestFrameEngineTrace checks the frame engine continues the caller's
// trace: a SERVER span child of the caller, a CLIENT span child of it, and
// the backend's traceparent naming the CLIENT span, exported to a real OTLP
// receiver.
func TestFrameEngineTrace(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	be := startBackends(t, "ftrace", 1)[0]
	cfg, err := config.Parse([]byte(`
engine: frame
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes: [{name: traced, match: {service: grpc.testing.TestService}, cluster: one}]
clusters: [{name: one, endpoints: [`+be.Addr+`]}]
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tracing.New(context.Background(), tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	})
	m := runMesh(t, cfg, server.WithTracing(tp))
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	waitFor(t, 10*time.Second, "the endpoint to be admitted", func() bool {
		_, err := client.EmptyCall(context.Background(), &testpb.Empty{})
		return err == nil
	})

	const tid = "0af7651916cd43dd8448eb211c80319c"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tid+"-"+obsCallerSpan+"-01", "baggage", "tenant=acme")
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	md := be.LastMetadata()
	tps := md.Get("traceparent")
	if len(tps) != 1 {
		t.Fatalf("backend saw traceparent %q, want exactly one (meshd's replaces the caller's)", tps)
	}
	parts := strings.Split(tps[0], "-")
	if len(parts) != 4 || parts[1] != tid || parts[2] == obsCallerSpan {
		t.Fatalf("backend traceparent %q: want trace %s with meshd's span as parent", tps[0], tid)
	}
	if got := md.Get("baggage"); len(got) != 1 || got[0] != "tenant=acme" {
		t.Errorf("backend baggage %q, want the caller's", got)
	}

	var spans []*tracepb.Span
	waitFor(t, 10*time.Second, "the call's SERVER and CLIENT spans", func() bool {
		spans = spans[:0]
		for _, s := range recv.Spans() {
			if hex.EncodeToString(s.GetTraceId()) == tid {
				spans = append(spans, s)
			}
		}
		return len(spansOfKind(spans, tracepb.Span_SPAN_KIND_SERVER)) == 1 && len(spansOfKind(spans, tracepb.Span_SPAN_KIND_CLIENT)) == 1
	})
	srv := spansOfKind(spans, tracepb.Span_SPAN_KIND_SERVER)[0]
	cl := spansOfKind(spans, tracepb.Span_SPAN_KIND_CLIENT)[0]
	if got := hex.EncodeToString(srv.GetParentSpanId()); got != obsCallerSpan {
		t.Errorf("SERVER span parent %s, want the caller's %s", got, obsCallerSpan)
	}
	if hex.EncodeToString(cl.GetParentSpanId()) != hex.EncodeToString(srv.GetSpanId()) {
		t.Errorf("CLIENT span is not a child of the SERVER span")
	}
	if hex.EncodeToString(cl.GetSpanId()) != parts[2] {
		t.Errorf("backend's parent %s is not the CLIENT span %s", parts[2], hex.EncodeToString(cl.GetSpanId()))
	}
	wantSpanAttrs(t, srv, map[string]any{"rpc.system": "grpc", "rpc.method": "UnaryCall", "meshd.route": "traced", "meshd.cluster": "one"})
	wantSpanAttrs(t, cl, map[string]any{"meshd.endpoint": be.Addr, "meshd.attempt": 1})
}
