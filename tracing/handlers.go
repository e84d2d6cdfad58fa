package tracing

import (
	"context"
	"net"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// serverHandler makes the SERVER span of each inbound call. grpc-go calls
// TagRPC before the handler runs and hands the returned context to the
// handler as the stream's context.
type serverHandler struct{ p *Provider }

var _ stats.Handler = (*serverHandler)(nil)

func (h *serverHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	ctx, span := h.p.startServer(ctx, info.FullMethodName, incomingCarrier{ctx})
	if span.IsRecording() {
		if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
			span.SetAttributes(peerAttrs(addrHostPort(pr.Addr))...)
		}
	}
	return ctx
}

func (h *serverHandler) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	if end, ok := rs.(*stats.End); ok {
		endFromStats(trace.SpanFromContext(ctx), end)
	}
}

func (h *serverHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (h *serverHandler) HandleConn(context.Context, stats.ConnStats) {}

// clientHandler makes the CLIENT span of each upstream attempt. grpc-go calls
// TagRPC once per attempt (its own transparent retries included) and builds
// the request headers from the returned context's outgoing metadata. Calls
// with neither WithAttempt nor a span context in their context are left
// alone.
type clientHandler struct{ p *Provider }

var _ stats.Handler = (*clientHandler)(nil)

func (h *clientHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	endpoint, attempt, ok := attemptFromContext(ctx)
	if !ok && !trace.SpanContextFromContext(ctx).IsValid() {
		// Not a proxied call: health checks and the like share the
		// upstream connection, and a root span every poll would bury the
		// traces people look for.
		return ctx
	}
	// FromOutgoingContext returns a copy, which is ours to change.
	md, _ := metadata.FromOutgoingContext(ctx)
	if md == nil {
		md = make(metadata.MD, 3)
	}
	// The propagator's keys are replaced, not merged, so a stale value
	// copied from elsewhere can never contradict the span injected here.
	for _, k := range [...]string{"traceparent", "tracestate", "baggage"} {
		delete(md, k)
	}
	ctx, _ = h.p.startClient(ctx, info.FullMethodName, endpoint, attempt, ok, mdCarrier(md))
	return metadata.NewOutgoingContext(ctx, md)
}

func (h *clientHandler) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	switch rs := rs.(type) {
	case *stats.OutHeader:
		// Without WithAttempt, the transport's view of the attempt is the
		// next best source for the address attributes.
		span := trace.SpanFromContext(ctx)
		if !span.IsRecording() {
			return
		}
		if _, _, ok := attemptFromContext(ctx); ok {
			return
		}
		if rs.Authority != "" {
			span.SetAttributes(serverAttrs(splitHostPort(rs.Authority))...)
		}
		if rs.RemoteAddr != nil {
			span.SetAttributes(peerAttrs(addrHostPort(rs.RemoteAddr))...)
		}
	case *stats.End:
		endFromStats(trace.SpanFromContext(ctx), rs)
	}
}

func (h *clientHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (h *clientHandler) HandleConn(context.Context, stats.ConnStats) {}

func endFromStats(span trace.Span, end *stats.End) {
	code, msg := codes.OK, ""
	if end.Error != nil {
		st := status.Convert(end.Error)
		code, msg = st.Code(), st.Message()
	}
	EndSpan(span, code, msg)
}

func addrHostPort(a net.Addr) (string, int) {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String(), tcp.Port
	}
	return splitHostPort(a.String())
}

// incomingCarrier reads the trace headers of an inbound call one key at a
// time, instead of copying all of its metadata the way FromIncomingContext
// does.
type incomingCarrier struct{ ctx context.Context }

var _ propagation.TextMapCarrier = incomingCarrier{}

func (c incomingCarrier) Get(key string) string {
	vals := metadata.ValueFromIncomingContext(c.ctx, key)
	switch len(vals) {
	case 0:
		return ""
	case 1:
		return vals[0]
	}
	// tracestate and baggage may be split over several header fields,
	// which HTTP allows to be joined with commas.
	return strings.Join(vals, ",")
}

// Set does nothing: inbound metadata is read-only.
func (c incomingCarrier) Set(string, string) {}

func (c incomingCarrier) Keys() []string {
	md, _ := metadata.FromIncomingContext(c.ctx)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	return keys
}

// mdCarrier adapts outgoing metadata to the propagator.
type mdCarrier metadata.MD

var _ propagation.TextMapCarrier = mdCarrier{}

func (c mdCarrier) Get(key string) string {
	vals := c[strings.ToLower(key)]
	if len(vals) == 0 {
		return ""
	}
	return strings.Join(vals, ",")
}

func (c mdCarrier) Set(key, value string) { c[strings.ToLower(key)] = []string{value} }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
