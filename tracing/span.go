package tracing

import (
	"context"
	"net"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
)

// Attribute keys meshd adds to the RPC semantic conventions' own.
const (
	// RouteKey names the route that matched the call (SERVER span).
	RouteKey = attribute.Key("meshd.route")
	// ClusterKey names the cluster the route chose (SERVER span).
	ClusterKey = attribute.Key("meshd.cluster")
	// EndpointKey is the upstream address of one attempt (CLIENT span).
	EndpointKey = attribute.Key("meshd.endpoint")
	// AttemptKey is the 1-based attempt number (CLIENT span).
	AttemptKey = attribute.Key("meshd.attempt")
)

// SetRoute records the route and cluster on the SERVER span in ctx. It does
// nothing, and allocates nothing, when that span is not recording (tracing
// disabled, or the call not sampled).
func SetRoute(ctx context.Context, route, cluster string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(RouteKey.String(route), ClusterKey.String(cluster))
}

// PeerKey is the SERVER span attribute naming the caller's mesh identity
// (its SPIFFE ID), set on calls that arrived on a mesh listener with a
// client certificate.
const PeerKey = attribute.Key("meshd.peer.identity")

// SetPeer records the caller's mesh identity on the SERVER span in ctx;
// "" records nothing.
func SetPeer(ctx context.Context, id string) {
	if id == "" {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(PeerKey.String(id))
}

// HedgeKey marks the CLIENT span of a hedged attempt (one started
// beside the call's first, not after its failure).
const HedgeKey = attribute.Key("meshd.hedge")

// SetHedge marks span as a hedged attempt's.
func SetHedge(span trace.Span) {
	if span.IsRecording() {
		span.SetAttributes(HedgeKey.Bool(true))
	}
}

// FaultKey is the SERVER span attribute naming the fault a route injected
// into the call ("delay" or "abort"): a drill's failures are told apart
// from real ones in traces too.
const FaultKey = attribute.Key("meshd.fault")

// SetFault records the injected fault on the SERVER span in ctx; ""
// records nothing.
func SetFault(ctx context.Context, kind string) {
	if kind == "" {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(FaultKey.String(kind))
}

// StartServer starts the SERVER span of an inbound call, when the call is
// accepted: method is the :path ("/pkg.Svc/Method"), hdr the request's
// header fields, from which the caller's W3C trace context and baggage are
// extracted (nil: none), and peer the caller's "ip:port" ("" leaves the
// peer attributes out). The span continues the caller's trace, or starts
// one. The returned context carries the span and the baggage, for SetRoute
// and StartClient. End the span with EndSpan.
//
// For a disabled Provider it returns ctx and a non-recording span, without
// allocating.
func (p *Provider) StartServer(ctx context.Context, method string, hdr propagation.TextMapCarrier, peer string) (context.Context, trace.Span) {
	if !p.Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	if hdr != nil {
		ctx = p.prop.Extract(ctx, hdr)
	}
	name, svc, rpcMethod := splitMethod(method)
	// Attributes are set after the sampling decision rather than passed to
	// Start: meshd's samplers ignore them, and unsampled calls then build
	// none.
	ctx, span := p.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		attrs := rpcAttrs(svc, rpcMethod)
		if peer != "" {
			attrs = append(attrs, peerAttrs(splitHostPort(peer))...)
		}
		span.SetAttributes(attrs...)
	}
	return ctx, span
}

// StartClient starts the CLIENT span of one upstream attempt, a child of the
// span in ctx (StartServer's context), and writes traceparent, tracestate
// and baggage into out, the attempt's extra request header fields (nil skips
// that). The injected traceparent names this span, so the backend's spans
// hang under the attempt that reached it; out must let these replace
// whatever the caller sent under the same names. method is the :path,
// endpoint the upstream "host:port" and attempt its 1-based number: a retry
// or a reroute is a new StartClient, with the next number, after EndSpan of
// the previous attempt. End the span with EndSpan.
//
// Unsampled calls still get a span context and an injected traceparent
// (flagged not sampled), so the trace stays connected past meshd.
//
// For a disabled Provider it returns ctx and a non-recording span and writes
// nothing, without allocating.
func (p *Provider) StartClient(ctx context.Context, method, endpoint string, attempt int, out propagation.TextMapCarrier) (context.Context, trace.Span) {
	if !p.Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	name, svc, rpcMethod := splitMethod(method)
	ctx, span := p.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		host, port := splitHostPort(endpoint)
		attrs := rpcAttrs(svc, rpcMethod)
		attrs = append(attrs, serverAttrs(host, port)...)
		attrs = append(attrs, peerAttrs(host, port)...)
		attrs = append(attrs, EndpointKey.String(endpoint), AttemptKey.Int(attempt))
		span.SetAttributes(attrs...)
	}
	if out != nil {
		p.prop.Inject(ctx, out)
	}
	return ctx, span
}

// EndSpan records a call's gRPC status on span and ends it. The status code
// always becomes rpc.grpc.status_code. The span's status becomes Error with
// msg as described by the RPC semantic conventions: on CLIENT spans for any
// code but OK; on SERVER spans only for the codes that mean the server
// failed (Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable,
// DataLoss), since NotFound and the like are answers, not faults.
func EndSpan(span trace.Span, code codes.Code, msg string) {
	if span.IsRecording() {
		span.SetAttributes(semconv.RPCGRPCStatusCodeKey.Int(int(code)))
		if isError(span, code) {
			span.SetStatus(otelcodes.Error, msg)
		}
	}
	span.End()
}

func isError(span trace.Span, code codes.Code) bool {
	if code == codes.OK {
		return false
	}
	// The SDK's spans expose their kind; trace.Span does not.
	if k, ok := span.(interface{ SpanKind() trace.SpanKind }); ok && k.SpanKind() == trace.SpanKindServer {
		switch code {
		case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented,
			codes.Internal, codes.Unavailable, codes.DataLoss:
			return true
		}
		return false
	}
	return true
}

// splitMethod splits "/pkg.Svc/Method" into the span name "pkg.Svc/Method"
// and its service and method. A malformed name is used as it is, with no
// service or method.
func splitMethod(full string) (name, svc, method string) {
	name = strings.TrimPrefix(full, "/")
	i := strings.LastIndexByte(name, '/')
	if i <= 0 || i == len(name)-1 {
		return name, "", ""
	}
	return name, name[:i], name[i+1:]
}

func rpcAttrs(svc, method string) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 9) // room for the client's additions
	attrs = append(attrs, semconv.RPCSystemGRPC)
	if svc != "" {
		attrs = append(attrs, semconv.RPCService(svc), semconv.RPCMethod(method))
	}
	return attrs
}

func serverAttrs(host string, port int) []attribute.KeyValue {
	if host == "" {
		return nil
	}
	if port == 0 {
		return []attribute.KeyValue{semconv.ServerAddress(host)}
	}
	return []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)}
}

func peerAttrs(host string, port int) []attribute.KeyValue {
	if host == "" {
		return nil
	}
	if port == 0 {
		return []attribute.KeyValue{semconv.NetworkPeerAddress(host)}
	}
	return []attribute.KeyValue{semconv.NetworkPeerAddress(host), semconv.NetworkPeerPort(port)}
}

// splitHostPort splits "host:port"; without a valid port the whole string is
// the host and the port is 0.
func splitHostPort(addr string) (string, int) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return addr, 0
	}
	return host, port
}
