package tracing_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/tracing"
)

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
	checkMethod = "grpc.health.v1.Health/Check"
)

// TestChain runs caller → proxy → backend and checks the spans and headers
// that tie the three together.
func TestChain(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	be := startBackend(t, codes.OK)
	proxy, ended := startProxy(t, p, be.addr)

	err := check(t, proxy,
		"traceparent", "00-"+callerTrace+"-"+callerSpan+"-01",
		"tracestate", "vendor=abc",
		"baggage", "tenant=acme",
		"x-app", "kept")
	if err != nil {
		t.Fatalf("Check through proxy: %v", err)
	}
	ended.wait(t, 1)
	spans := recv.WaitSpans(t, 2, waitTimeout)
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want SERVER and CLIENT", len(spans))
	}
	srv, cli := byKind(spans, tracepb.Span_SPAN_KIND_SERVER), byKind(spans, tracepb.Span_SPAN_KIND_CLIENT)
	if len(srv) != 1 || len(cli) != 1 {
		t.Fatalf("got %d SERVER and %d CLIENT spans, want 1 each", len(srv), len(cli))
	}
	server, client := srv[0], cli[0]

	for _, s := range spans {
		if traceID(s) != callerTrace {
			t.Errorf("%s span trace id %s, want the caller's %s", s.GetKind(), traceID(s), callerTrace)
		}
		if s.GetName() != checkMethod {
			t.Errorf("%s span name %q, want %q", s.GetKind(), s.GetName(), checkMethod)
		}
	}
	if parentID(server) != callerSpan {
		t.Errorf("SERVER parent %s, want the caller's span %s", parentID(server), callerSpan)
	}
	if parentID(client) != spanID(server) {
		t.Errorf("CLIENT parent %s, want the SERVER span %s", parentID(client), spanID(server))
	}
	if got := server.GetTraceState(); got != "vendor=abc" {
		t.Errorf("SERVER tracestate %q, want the caller's", got)
	}

	calls := be.calls()
	if len(calls) != 1 {
		t.Fatalf("backend saw %d calls, want 1", len(calls))
	}
	tid, pid, flags := traceparent(t, one(t, calls[0], "traceparent"))
	if tid != callerTrace || pid != spanID(client) || flags != "01" {
		t.Errorf("backend traceparent = %s/%s/%s, want %s/%s(CLIENT span)/01", tid, pid, flags, callerTrace, spanID(client))
	}
	if got := one(t, calls[0], "tracestate"); got != "vendor=abc" {
		t.Errorf("backend tracestate %q, want vendor=abc", got)
	}
	if got := one(t, calls[0], "baggage"); got != "tenant=acme" {
		t.Errorf("backend baggage %q, want tenant=acme", got)
	}
	if got := one(t, calls[0], "x-app"); got != "kept" {
		t.Errorf("backend x-app %q: the handler lost other metadata", got)
	}

	common := map[string]any{
		"rpc.system":           "grpc",
		"rpc.service":          "grpc.health.v1.Health",
		"rpc.method":           "Check",
		"rpc.grpc.status_code": 0,
	}
	wantAttrs(t, server, common)
	wantAttrs(t, client, common)
	wantAttrs(t, server, map[string]any{
		"meshd.route":          "test-route",
		"meshd.cluster":        "test-cluster",
		"network.peer.address": "127.0.0.1",
	})
	if attr(server, "network.peer.port") == nil {
		t.Error("SERVER span: network.peer.port missing")
	}
	host, port, _ := net.SplitHostPort(be.addr)
	portN, _ := strconv.Atoi(port)
	wantAttrs(t, client, map[string]any{
		"meshd.endpoint":       be.addr,
		"meshd.attempt":        1,
		"server.address":       host,
		"server.port":          portN,
		"network.peer.address": host,
		"network.peer.port":    portN,
	})
	for _, s := range spans {
		if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
			t.Errorf("%s span has error status for an OK call", s.GetKind())
		}
	}
}

// TestRetryAttempts: one CLIENT span per attempt, numbered, each the parent
// named in the traceparent its backend received.
func TestRetryAttempts(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	bad := startBackend(t, codes.Unavailable)
	good := startBackend(t, codes.OK)
	proxy, ended := startProxy(t, p, bad.addr, good.addr)

	if err := check(t, proxy); err != nil {
		t.Fatalf("Check through proxy: %v", err)
	}
	ended.wait(t, 1)
	spans := recv.WaitSpans(t, 3, waitTimeout)
	server := byKind(spans, tracepb.Span_SPAN_KIND_SERVER)
	clients := byKind(spans, tracepb.Span_SPAN_KIND_CLIENT)
	if len(server) != 1 || len(clients) != 2 {
		t.Fatalf("got %d SERVER and %d CLIENT spans, want 1 and 2", len(server), len(clients))
	}
	byAttempt := map[int64]*tracepb.Span{}
	for _, c := range clients {
		byAttempt[attr(c, "meshd.attempt").GetIntValue()] = c
		if parentID(c) != spanID(server[0]) {
			t.Errorf("attempt span's parent %s, want SERVER %s", parentID(c), spanID(server[0]))
		}
	}
	first, second := byAttempt[1], byAttempt[2]
	if first == nil || second == nil {
		t.Fatalf("attempt numbers %v, want 1 and 2", byAttempt)
	}
	wantAttrs(t, first, map[string]any{"meshd.endpoint": bad.addr, "rpc.grpc.status_code": int(codes.Unavailable)})
	wantAttrs(t, second, map[string]any{"meshd.endpoint": good.addr, "rpc.grpc.status_code": 0})
	wantAttrs(t, server[0], map[string]any{"rpc.grpc.status_code": 0})
	if first.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("failed attempt's span status %v, want Error", first.GetStatus())
	}
	if second.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("successful attempt's span status %v", second.GetStatus())
	}

	for _, tc := range []struct {
		be   *backend
		span *tracepb.Span
	}{{bad, first}, {good, second}} {
		calls := tc.be.calls()
		if len(calls) != 1 {
			t.Fatalf("backend %s saw %d calls, want 1", tc.be.addr, len(calls))
		}
		if _, pid, _ := traceparent(t, one(t, calls[0], "traceparent")); pid != spanID(tc.span) {
			t.Errorf("backend %s got parent %s, want its attempt's span %s", tc.be.addr, pid, spanID(tc.span))
		}
	}
}

// TestStatus checks how upstream outcomes land on the two spans: the status
// code always, Error status on CLIENT spans for any failure but on SERVER
// spans only for server faults.
func TestStatus(t *testing.T) {
	t.Parallel()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close() // nothing listens there any more: connection refused

	for _, tc := range []struct {
		name      string
		code      codes.Code // backend's answer
		dead      bool       // no backend: the upstream refuses connections
		want      codes.Code
		serverErr bool
	}{
		{name: "not found", code: codes.NotFound, want: codes.NotFound, serverErr: false},
		{name: "permission denied", code: codes.PermissionDenied, want: codes.PermissionDenied, serverErr: false},
		{name: "internal", code: codes.Internal, want: codes.Internal, serverErr: true},
		{name: "unavailable", code: codes.Unavailable, want: codes.Unavailable, serverErr: true},
		{name: "unreachable", dead: true, want: codes.Unavailable, serverErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recv := otlptest.Start(t)
			p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
			upstream := deadAddr
			if !tc.dead {
				upstream = startBackend(t, tc.code).addr
			}
			proxy, ended := startProxy(t, p, upstream)
			if got := status.Code(check(t, proxy)); got != tc.want {
				t.Fatalf("caller got %v, want %v", got, tc.want)
			}
			ended.wait(t, 1)
			spans := recv.WaitSpans(t, 2, waitTimeout)
			for _, s := range spans {
				wantAttrs(t, s, map[string]any{"rpc.grpc.status_code": int(tc.want)})
				isErr := s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR
				wantErr := s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT || tc.serverErr
				if isErr != wantErr {
					t.Errorf("%s span: error status %v, want %v (%v)", s.GetKind(), isErr, wantErr, s.GetStatus())
				}
				if isErr && s.GetStatus().GetMessage() == "" {
					t.Errorf("%s span: error status without a message", s.GetKind())
				}
			}
		})
	}
}

// TestSampling: parent-based sampling. An unsampled call still propagates a
// valid traceparent flagged 00, so the trace stays connected downstream.
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
			be := startBackend(t, codes.OK)
			proxy, ended := startProxy(t, p, be.addr)
			var md []string
			if tc.parent != "" {
				md = []string{"traceparent", "00-" + callerTrace + "-" + callerSpan + "-" + tc.parent}
			}
			if err := check(t, proxy, md...); err != nil {
				t.Fatalf("Check through proxy: %v", err)
			}
			ended.wait(t, 1)

			calls := be.calls()
			if len(calls) != 1 {
				t.Fatalf("backend saw %d calls", len(calls))
			}
			tid, pid, flags := traceparent(t, one(t, calls[0], "traceparent"))
			if flags != tc.wantFlags {
				t.Errorf("backend traceparent flags %s, want %s", flags, tc.wantFlags)
			}
			if tc.parent != "" && tid != callerTrace {
				t.Errorf("backend trace id %s, want the caller's %s", tid, callerTrace)
			}
			if pid == callerSpan || pid == "0000000000000000" {
				t.Errorf("backend parent id %s: the proxy's CLIENT span was not injected", pid)
			}

			// Shutdown flushes every span that ended, so afterwards the
			// receiver holds all that will ever be exported.
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if got := len(recv.Spans()); got != tc.exported {
				t.Errorf("exported %d spans, want %d", got, tc.exported)
			}
			if d := p.Dropped(); d != 0 {
				t.Errorf("Dropped = %d, want 0", d)
			}
		})
	}
}

// TestCollectorDown: with the collector gone, calls go on unhindered, every
// span is counted as dropped, the failure is logged once, and Shutdown gives
// up within its context without leaving goroutines behind.
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
		// Batches fail while calls go on: each failure counts, one log.
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
			be := startBackend(t, codes.OK)
			proxy, ended := startProxy(t, p, be.addr)

			conn := dial(t, proxy)
			client := healthpb.NewHealthClient(conn)
			for i := range calls {
				// A budget far below the export timeout: a call that
				// waited on the exporter would miss it.
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
				cancel()
				if err != nil {
					t.Fatalf("call %d with the collector down: %v", i, err)
				}
			}
			ended.wait(t, calls)

			ctx, cancel := context.WithTimeout(context.Background(), tc.shutdownIn)
			defer cancel()
			start := time.Now()
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

// TestClientHandlerWithoutAttempt: a call made within a traced call but
// without WithAttempt still gets a CLIENT span, addressed from the
// transport, and a traceparent naming it; a call outside any trace (a health
// check on the same connection) gets neither.
func TestClientHandlerWithoutAttempt(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	p := newProvider(t, recv.Addr, tracing.WithSampleRatio(1))
	be := startBackend(t, codes.OK)
	conn := dial(t, be.addr, grpc.WithStatsHandler(p.ClientHandler()))
	client := healthpb.NewHealthClient(conn)

	// Untraced: nothing added, nothing exported.
	if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if tp := be.calls()[0].Get("traceparent"); len(tp) != 0 {
		t.Errorf("untraced call carried traceparent %q", tp)
	}

	// Traced, with outgoing metadata already carrying stale trace headers:
	// the handler's values replace them.
	ctx, server := p.StartServer(t.Context(), "/pkg.Svc/Do", nil, "")
	ctx = metadata.AppendToOutgoingContext(ctx,
		"traceparent", "00-"+callerTrace+"-"+callerSpan+"-01",
		"tracestate", "stale=1")
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: %v", err)
	}
	tracing.EndSpan(server, codes.OK, "")
	shutdown(t, p)

	spans := recv.Spans()
	if len(spans) != 2 {
		t.Fatalf("exported %d spans, want the SERVER span and one CLIENT span", len(spans))
	}
	cli := byKind(spans, tracepb.Span_SPAN_KIND_CLIENT)
	if len(cli) != 1 || parentID(cli[0]) != server.SpanContext().SpanID().String() {
		t.Fatalf("want one CLIENT span, child of the SERVER span; got %v", spans)
	}
	host, port, _ := net.SplitHostPort(be.addr)
	portN, _ := strconv.Atoi(port)
	wantAttrs(t, cli[0], map[string]any{
		"server.address":       host,
		"server.port":          portN,
		"network.peer.address": host,
		"network.peer.port":    portN,
		"rpc.grpc.status_code": 0,
	})
	if attr(cli[0], "meshd.attempt") != nil || attr(cli[0], "meshd.endpoint") != nil {
		t.Error("meshd.attempt/endpoint set without WithAttempt")
	}
	calls := be.calls()
	tid, pid, _ := traceparent(t, one(t, calls[1], "traceparent"))
	if tid != traceID(cli[0]) || pid != spanID(cli[0]) {
		t.Errorf("backend traceparent %s/%s, want the CLIENT span %s/%s", tid, pid, traceID(cli[0]), spanID(cli[0]))
	}
	if ts := calls[1].Get("tracestate"); len(ts) != 0 {
		t.Errorf("backend got tracestate %q from a stale context, want none", ts)
	}
}
