// Package tracing gives meshd OpenTelemetry spans for every proxied call and
// sends them to an OTLP/gRPC collector.
//
// Each call through meshd yields one SERVER span (the inbound call, parented
// on the caller's W3C traceparent) and one CLIENT span per upstream attempt
// (a child of the SERVER span, whose context is injected into the upstream
// request), so a trace shows retries and which endpoint served each attempt.
// Attributes follow the OpenTelemetry RPC semantic conventions (rpc.system,
// rpc.service, rpc.method, rpc.grpc.status_code, server.address,
// network.peer.address, ...) plus meshd.route, meshd.cluster,
// meshd.endpoint and meshd.attempt.
//
// There are two layers over the same spans:
//
//   - For grpc-go: Provider.ServerHandler and Provider.ClientHandler are
//     stats.Handlers for the listener's grpc.Server and the upstream
//     connections. The director records its choice with SetRoute and marks
//     each attempt's context with WithAttempt. They are stats handlers, not
//     interceptors, because grpc-go calls them once per attempt (its own
//     transparent retries included) and at the transport, right where the
//     request headers are built from the context's metadata.
//   - For the frame engine, which sees header fields rather than grpc-go
//     streams: Provider.StartServer, Provider.StartClient and EndSpan.
//
// The director drops traceparent, tracestate and baggage when it copies
// inbound metadata upstream; the client side injects fresh values naming the
// CLIENT span. Baggage travels in the context from the SERVER span's
// extraction to the CLIENT span's injection.
//
// Exporting never slows the data path: ended spans go to a bounded queue and
// are sent in batches; when the queue is full or the collector fails, spans
// are dropped and counted (Provider.Dropped) and the change is logged once.
//
// A Provider owns its tracer provider and propagator and leaves
// OpenTelemetry's globals alone. Without an endpoint (WithEndpoint or the
// standard OTEL_EXPORTER_OTLP_* variables) New returns a disabled Provider
// whose layers do nothing and allocate nothing; its handler methods return
// nil, so callers install handlers only when Provider.Enabled is true.
package tracing
