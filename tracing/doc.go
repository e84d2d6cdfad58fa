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
// There is one way spans are made, from the frame engine's view of a call
// (its :path, header fields and addresses):
//
//   - Provider.StartServer when the call is accepted: it extracts the
//     caller's traceparent, tracestate and baggage from the request's
//     header fields.
//   - SetRoute once the router has chosen.
//   - Provider.StartClient for each attempt, numbered from 1: it injects a
//     traceparent naming the attempt's span, with the caller's tracestate
//     and baggage, into the header fields the attempt adds, which the
//     engine sends in place of the caller's fields of those names
//     (engine.Target.Header).
//     Baggage travels in the context from the SERVER span's extraction to
//     every CLIENT span's injection.
//   - EndSpan for each attempt when it ends, and for the SERVER span with
//     the call's final status.
//
// Where the parts live: this package holds the Provider and its options
// (provider.go), the spans (span.go) and the export queue that counts what
// is lost (export.go). The director makes the spans from the call
// (director/call.go for the call and its first attempt and for calls meshd
// answers itself, which get a SERVER span alone; director/retry.go for
// retries and reroutes). server.WithTracing hands a Provider to the
// director; cmd/meshd/observe.go builds it from the config's tracing section
// and shuts it down at exit. This package's tests cover each function
// against a real OTLP receiver; the spans of real calls through meshd,
// retries included, are tested end to end in test/.
//
// Exporting never slows the data path: ended spans go to a bounded queue and
// are sent in batches; when the queue is full or the collector fails, spans
// are dropped and counted (Provider.Dropped) and the change is logged once.
//
// A Provider owns its tracer provider and propagator and leaves
// OpenTelemetry's globals alone. Without an endpoint (WithEndpoint or the
// standard OTEL_EXPORTER_OTLP_* variables) New returns a disabled Provider
// whose methods do nothing and allocate nothing, and server.WithTracing
// installs nothing for it, so tracing off costs the data path nothing.
package tracing
