package tracing_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/tracing"
)

// TestPropagation: StartServer continues the trace in the caller's headers
// (or starts one), StartClient makes a child of the SERVER span and injects
// a traceparent naming itself, with the caller's tracestate and baggage.
func TestPropagation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		in        propagation.TextMapCarrier // the caller's header fields
		nilOut    bool                       // StartClient gets no carrier
		continues bool                       // the caller's trace and span are the parents
		state     string                     // tracestate, on the spans and injected
		baggage   string                     // tenant's baggage value, in the context and injected
	}{
		{
			name:      "caller's context",
			in:        propagation.MapCarrier{"traceparent": sampledParent, "tracestate": "vendor=abc", "baggage": "tenant=acme"},
			continues: true, state: "vendor=abc", baggage: "acme",
		},
		{
			name:      "no carrier for the attempt",
			in:        propagation.MapCarrier{"traceparent": sampledParent, "baggage": "tenant=acme"},
			nilOut:    true,
			continues: true, baggage: "acme",
		},
		{name: "no trace headers", in: propagation.MapCarrier{"x-app": "1"}},
		{name: "nil header carrier"},
		{
			// Baggage is independent of the trace context: it travels on.
			name: "baggage without traceparent", in: propagation.MapCarrier{"baggage": "tenant=acme"},
			baggage: "acme",
		},
		{
			// W3C: a traceparent that does not parse is ignored, and the
			// tracestate with it.
			name: "malformed traceparent",
			in:   propagation.MapCarrier{"traceparent": "00-" + callerTrace + "-xyz-01", "tracestate": "vendor=abc"},
		},
		{
			name: "all-zero trace id",
			in:   propagation.MapCarrier{"traceparent": "00-00000000000000000000000000000000-" + callerSpan + "-01"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recv := otlptest.Start(t)
			p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))

			sctx, server := p.StartServer(context.Background(), "/pkg.Svc/Do", tc.in, "127.0.0.1:50000")
			if got := trace.SpanFromContext(sctx); got != server {
				t.Error("StartServer's context does not carry its span")
			}
			if got := baggage.FromContext(sctx).Member("tenant").Value(); got != tc.baggage {
				t.Errorf("baggage in StartServer's context: tenant = %q, want %q", got, tc.baggage)
			}
			var out propagation.MapCarrier
			var outC propagation.TextMapCarrier
			if !tc.nilOut {
				out = propagation.MapCarrier{}
				outC = out
			}
			cctx, client := p.StartClient(sctx, "/pkg.Svc/Do", "10.0.0.1:7000", 1, outC)
			if got := trace.SpanFromContext(cctx); got != client {
				t.Error("StartClient's context does not carry its span")
			}
			tracing.EndSpan(client, codes.OK, "")
			tracing.EndSpan(server, codes.OK, "")
			shutdown(t, p)

			spans := recv.Spans()
			srv, cli := byID(spans, server.SpanContext()), byID(spans, client.SpanContext())
			if len(spans) != 2 || srv == nil || cli == nil {
				t.Fatalf("exported %d spans, want the SERVER and the CLIENT span", len(spans))
			}
			if srv.GetKind() != tracepb.Span_SPAN_KIND_SERVER || cli.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
				t.Errorf("kinds %v and %v, want SERVER and CLIENT", srv.GetKind(), cli.GetKind())
			}
			if tc.continues {
				if traceID(srv) != callerTrace || parentID(srv) != callerSpan {
					t.Errorf("SERVER span in trace %s with parent %q, want the caller's %s/%s", traceID(srv), parentID(srv), callerTrace, callerSpan)
				}
			} else if traceID(srv) == callerTrace || parentID(srv) != "" {
				t.Errorf("SERVER span in trace %s with parent %q, want a new root", traceID(srv), parentID(srv))
			}
			if traceID(cli) != traceID(srv) || parentID(cli) != spanID(srv) {
				t.Errorf("CLIENT span %s/parent %s, want a child of the SERVER span %s/%s", traceID(cli), parentID(cli), traceID(srv), spanID(srv))
			}
			for _, s := range []*tracepb.Span{srv, cli} {
				if got := s.GetTraceState(); got != tc.state {
					t.Errorf("%s span tracestate %q, want %q", s.GetKind(), got, tc.state)
				}
			}

			if tc.nilOut {
				return
			}
			tid, pid, flags := traceparent(t, out["traceparent"])
			if tid != traceID(cli) || pid != spanID(cli) || flags != "01" {
				t.Errorf("injected traceparent %s, want the CLIENT span %s/%s, sampled", out["traceparent"], traceID(cli), spanID(cli))
			}
			if got, ok := out["tracestate"]; got != tc.state || ok != (tc.state != "") {
				t.Errorf("injected tracestate %q (set %v), want %q", got, ok, tc.state)
			}
			wantBaggage := ""
			if tc.baggage != "" {
				wantBaggage = "tenant=" + tc.baggage
			}
			if got, ok := out["baggage"]; got != wantBaggage || ok != (wantBaggage != "") {
				t.Errorf("injected baggage %q (set %v), want %q", got, ok, wantBaggage)
			}
			if len(out) > 3 {
				t.Errorf("injected %v: more than the trace fields", out)
			}
		})
	}
}

// TestAttempts: a call with retries has one CLIENT span per attempt, each a
// child of the SERVER span, numbered and addressed, each named by the
// traceparent sent with that attempt; the SERVER span carries the route.
func TestAttempts(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	attempts := []struct {
		attempt
		host string
		port int // 0: none
	}{
		{attempt{"10.0.0.1:7000", codes.Unavailable, "connection refused"}, "10.0.0.1", 7000},
		{attempt{"[2001:db8::2]:443", codes.DeadlineExceeded, "per-try timeout"}, "2001:db8::2", 443},
		{attempt{"users.svc", codes.OK, ""}, "users.svc", 0},
	}
	var as []attempt
	for _, a := range attempts {
		as = append(as, a.attempt)
	}
	made, outs := tracedCall(p, "/pkg.v1.Svc/Do", propagation.MapCarrier{"traceparent": sampledParent}, as...)
	shutdown(t, p)

	spans := recv.Spans()
	if len(spans) != 1+len(attempts) {
		t.Fatalf("exported %d spans, want a SERVER span and %d CLIENT spans", len(spans), len(attempts))
	}
	server := byID(spans, made[0].SpanContext())
	wantAttrs(t, server, map[string]any{
		"rpc.system":           "grpc",
		"rpc.service":          "pkg.v1.Svc",
		"rpc.method":           "Do",
		"meshd.route":          "route-a",
		"meshd.cluster":        "cluster-a",
		"network.peer.address": "127.0.0.1",
		"network.peer.port":    50000,
		"rpc.grpc.status_code": 0,
		"meshd.attempt":        nil,
		"meshd.endpoint":       nil,
		"server.address":       nil,
	})
	if server.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("SERVER status %v for a call that ended OK", server.GetStatus())
	}
	seen := map[string]bool{}
	for i, a := range attempts {
		client := byID(spans, made[i+1].SpanContext())
		if client == nil {
			t.Fatalf("attempt %d's span not exported", i+1)
		}
		if client.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || client.GetName() != "pkg.v1.Svc/Do" {
			t.Errorf("attempt %d: %s span %q, want CLIENT pkg.v1.Svc/Do", i+1, client.GetKind(), client.GetName())
		}
		if parentID(client) != spanID(server) || traceID(client) != callerTrace {
			t.Errorf("attempt %d: parent %s in trace %s, want the SERVER span %s in %s", i+1, parentID(client), traceID(client), spanID(server), callerTrace)
		}
		var port any // absent without one
		if a.port != 0 {
			port = a.port
		}
		wantAttrs(t, client, map[string]any{
			"rpc.system":           "grpc",
			"rpc.service":          "pkg.v1.Svc",
			"rpc.method":           "Do",
			"meshd.attempt":        i + 1,
			"meshd.endpoint":       a.endpoint,
			"server.address":       a.host,
			"server.port":          port,
			"network.peer.address": a.host,
			"network.peer.port":    port,
			"rpc.grpc.status_code": int(a.code),
			"meshd.route":          nil,
		})
		_, pid, _ := traceparent(t, outs[i]["traceparent"])
		if pid != spanID(client) {
			t.Errorf("attempt %d sent parent %s, want its own span %s", i+1, pid, spanID(client))
		}
		if seen[pid] {
			t.Errorf("attempt %d sent the parent %s of an earlier attempt", i+1, pid)
		}
		seen[pid] = true
	}
}

// TestEndSpanStatus: every gRPC code lands on both spans as
// rpc.grpc.status_code; the span status is Error, with the message, on a
// CLIENT span for every code but OK and on a SERVER span only for the
// codes that mean the server failed.
func TestEndSpanStatus(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code      codes.Code
		serverErr bool
	}{
		{codes.OK, false},
		{codes.Canceled, false},
		{codes.Unknown, true},
		{codes.InvalidArgument, false},
		{codes.DeadlineExceeded, true},
		{codes.NotFound, false},
		{codes.AlreadyExists, false},
		{codes.PermissionDenied, false},
		{codes.ResourceExhausted, false},
		{codes.FailedPrecondition, false},
		{codes.Aborted, false},
		{codes.OutOfRange, false},
		{codes.Unimplemented, true},
		{codes.Internal, true},
		{codes.Unavailable, true},
		{codes.DataLoss, true},
		{codes.Unauthenticated, false},
	}
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	made := make([][]trace.Span, len(cases))
	for i, tc := range cases {
		made[i], _ = tracedCall(p, "/pkg.Svc/Do", nil, attempt{"10.0.0.1:7000", tc.code, "says " + tc.code.String()})
	}
	shutdown(t, p)
	spans := recv.Spans()

	for i, tc := range cases {
		t.Run(tc.code.String(), func(t *testing.T) {
			t.Parallel()
			for _, s := range made[i] {
				got := byID(spans, s.SpanContext())
				if got == nil {
					t.Fatal("span not exported")
				}
				wantAttrs(t, got, map[string]any{"rpc.grpc.status_code": int(tc.code)})
				wantErr := tc.code != codes.OK && (got.GetKind() == tracepb.Span_SPAN_KIND_CLIENT || tc.serverErr)
				st := got.GetStatus()
				if isErr := st.GetCode() == tracepb.Status_STATUS_CODE_ERROR; isErr != wantErr {
					t.Errorf("%s span status %v, want error %v", got.GetKind(), st, wantErr)
				}
				if wantErr && st.GetMessage() != "says "+tc.code.String() {
					t.Errorf("%s span status message %q, want the call's", got.GetKind(), st.GetMessage())
				}
				if !wantErr && st.GetCode() != tracepb.Status_STATUS_CODE_UNSET {
					t.Errorf("%s span status %v, want unset", got.GetKind(), st)
				}
			}
		})
	}
}

// TestSpanAttributes covers the forms of method and peer the frame engine
// may hand over as they are: malformed paths and peers without a port.
func TestSpanAttributes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, method, peer string
		want               map[string]any // SERVER span; nil value: absent
		spanName           string
	}{
		{
			name: "ipv4 peer", method: "/pkg.Svc/Do", peer: "10.1.2.3:80", spanName: "pkg.Svc/Do",
			want: map[string]any{"rpc.service": "pkg.Svc", "rpc.method": "Do", "network.peer.address": "10.1.2.3", "network.peer.port": 80},
		},
		{
			name: "ipv6 peer", method: "/pkg.Svc/Do", peer: "[2001:db8::1]:4567", spanName: "pkg.Svc/Do",
			want: map[string]any{"network.peer.address": "2001:db8::1", "network.peer.port": 4567},
		},
		{
			name: "peer without port", method: "/pkg.Svc/Do", peer: "/run/meshd.sock", spanName: "pkg.Svc/Do",
			want: map[string]any{"network.peer.address": "/run/meshd.sock", "network.peer.port": nil},
		},
		{
			name: "no peer", method: "/pkg.Svc/Do", spanName: "pkg.Svc/Do",
			want: map[string]any{"network.peer.address": nil, "network.peer.port": nil},
		},
		{
			name: "path without method", method: "/nomethod", peer: "10.1.2.3:80", spanName: "nomethod",
			want: map[string]any{"rpc.system": "grpc", "rpc.service": nil, "rpc.method": nil},
		},
	}
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	made := make([]trace.Span, len(cases))
	for i, tc := range cases {
		_, made[i] = p.StartServer(context.Background(), tc.method, nil, tc.peer)
		tracing.EndSpan(made[i], codes.OK, "")
	}
	shutdown(t, p)
	spans := recv.Spans()

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := byID(spans, made[i].SpanContext())
			if s == nil {
				t.Fatal("span not exported")
			}
			if s.GetName() != tc.spanName {
				t.Errorf("span name %q, want %q", s.GetName(), tc.spanName)
			}
			wantAttrs(t, s, tc.want)
		})
	}
}

// TestSampling: parent-based sampling. An unsampled call still gets span
// contexts and sends a valid traceparent flagged 00, so the trace stays
// connected downstream; only sampled spans are exported.
func TestSampling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		ratio     float64
		parent    string // caller's flags, "" for no traceparent
		wantFlags string
		exported  int
	}{
		{name: "ratio 0, no parent", ratio: 0, wantFlags: "00", exported: 0},
		{name: "ratio 0, sampled parent", ratio: 0, parent: "01", wantFlags: "01", exported: 2},
		{name: "ratio 1, unsampled parent", ratio: 1, parent: "00", wantFlags: "00", exported: 0},
		{name: "ratio 1, no parent", ratio: 1, wantFlags: "01", exported: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recv := otlptest.Start(t)
			p := newProvider(t, recv.Addr, tracing.WithSampleRatio(tc.ratio))
			in := propagation.MapCarrier{}
			if tc.parent != "" {
				in["traceparent"] = "00-" + callerTrace + "-" + callerSpan + "-" + tc.parent
			}
			made, outs := tracedCall(p, "/pkg.Svc/Do", in, attempt{"10.0.0.1:7000", codes.OK, ""})
			server, client := made[0].SpanContext(), made[1].SpanContext()
			if !server.IsValid() || !client.IsValid() {
				t.Fatal("spans without valid span contexts: nothing to propagate")
			}
			if sampled := tc.wantFlags == "01"; server.IsSampled() != sampled || client.IsSampled() != sampled {
				t.Errorf("sampled: SERVER %v, CLIENT %v; want %v", server.IsSampled(), client.IsSampled(), sampled)
			}
			tid, pid, flags := traceparent(t, outs[0]["traceparent"])
			if flags != tc.wantFlags {
				t.Errorf("injected traceparent flags %s, want %s", flags, tc.wantFlags)
			}
			if tc.parent != "" && tid != callerTrace {
				t.Errorf("injected trace id %s, want the caller's %s", tid, callerTrace)
			}
			if pid != client.SpanID().String() {
				t.Errorf("injected parent %s, want the CLIENT span %s", pid, client.SpanID())
			}

			shutdown(t, p)
			if got := len(recv.Spans()); got != tc.exported {
				t.Errorf("exported %d spans, want %d", got, tc.exported)
			}
			if d := p.Dropped(); d != 0 {
				t.Errorf("Dropped = %d, want 0", d)
			}
		})
	}
}

// TestConcurrentCalls: the Provider serves many calls at once (run with
// -race); every span is exported once, none dropped, each CLIENT span
// under its own call's SERVER span.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	const workers, calls = 8, 25
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range calls {
				tracedCall(p, "/pkg.Svc/Do", nil,
					attempt{"10.0.0.1:7000", codes.Unavailable, "refused"},
					attempt{"10.0.0.2:7000", codes.OK, ""})
			}
		})
	}
	wg.Wait()
	shutdown(t, p)

	spans := recv.Spans()
	if len(spans) != workers*calls*3 {
		t.Fatalf("exported %d spans, want %d", len(spans), workers*calls*3)
	}
	if d := p.Dropped(); d != 0 {
		t.Errorf("Dropped = %d, want 0", d)
	}
	servers := map[string]string{} // span id → trace id
	for _, s := range byKind(spans, tracepb.Span_SPAN_KIND_SERVER) {
		servers[spanID(s)] = traceID(s)
	}
	traces := map[string]bool{}
	for _, tid := range servers {
		traces[tid] = true
	}
	if len(servers) != workers*calls || len(traces) != workers*calls {
		t.Errorf("%d SERVER spans in %d traces, want %d calls with a trace each", len(servers), len(traces), workers*calls)
	}
	for _, c := range byKind(spans, tracepb.Span_SPAN_KIND_CLIENT) {
		if tid, ok := servers[parentID(c)]; !ok || tid != traceID(c) {
			t.Errorf("CLIENT span %s is not a child of a SERVER span in its trace", spanID(c))
		}
	}
}

// TestCollectorDown: with the collector gone, spans still start and end
// without waiting, every one is counted as dropped, the failure is logged
// once, and Shutdown gives up within its context without leaving goroutines
// behind.
func TestCollectorDown(t *testing.T) {
	t.Parallel()
	const calls = 10
	for _, tc := range []struct {
		name          string
		batchTimeout  time.Duration
		exportTimeout time.Duration
		shutdownIn    time.Duration
		wantErr       bool
		logOnce       bool
	}{
		// Batches go out, and fail, before Shutdown: each failure
		// counts, one log.
		{name: "exports fail", batchTimeout: 10 * time.Millisecond, exportTimeout: 100 * time.Millisecond, shutdownIn: waitTimeout, logOnce: true},
		// Everything waits for the final flush, which fails.
		{name: "flush fails", batchTimeout: time.Minute, exportTimeout: 100 * time.Millisecond, shutdownIn: waitTimeout, wantErr: true},
		// Exports would outlast the caller, who waits only briefly:
		// Shutdown abandons them.
		{name: "shutdown gives up", batchTimeout: 10 * time.Millisecond, exportTimeout: time.Minute, shutdownIn: 200 * time.Millisecond, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recv := otlptest.Start(t)
			recv.Stop()
			var logs syncBuffer
			p := newProvider(t, recv.Addr,
				tracing.WithSampleRatio(1),
				tracing.WithBatchTimeout(tc.batchTimeout),
				tracing.WithExportTimeout(tc.exportTimeout),
				tracing.WithLogger(slogTo(&logs)))

			// A budget far below the slowest export: calls whose spans
			// waited on the exporter would miss it.
			start := time.Now()
			for range calls {
				tracedCall(p, "/pkg.Svc/Do", nil, attempt{"10.0.0.1:7000", codes.OK, ""})
			}
			if el := time.Since(start); el > time.Second {
				t.Errorf("%d calls' spans took %v with the collector down", calls, el)
			}

			ctx, cancel := context.WithTimeout(context.Background(), tc.shutdownIn)
			defer cancel()
			start = time.Now()
			err := p.Shutdown(ctx)
			if tc.wantErr && err == nil {
				t.Error("Shutdown reported no error though its flush exported nothing")
			}
			if el := time.Since(start); el > tc.shutdownIn+2*time.Second {
				t.Errorf("Shutdown took %v with a budget of %v", el, tc.shutdownIn)
			}
			t.Logf("Shutdown: %v", err)
			if got, want := p.Dropped(), uint64(2*calls); got != want {
				t.Errorf("Dropped = %d, want %d (every SERVER and CLIENT span)", got, want)
			}
			if tc.logOnce {
				if n := countLines(logs.String(), "trace export failed"); n != 1 {
					t.Errorf("logged the export failure %d times, want once:\n%s", n, logs.String())
				}
			}
		})
	}
}
