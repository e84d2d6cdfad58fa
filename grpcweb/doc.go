// Package grpcweb accepts gRPC-Web, the protocol browsers can speak, and
// turns each request into a native gRPC call into meshd's own engine, so
// that routing, balancing, retries, tracing, metrics and logs are the
// native path's, written once.
//
// Where its parts live:
//   - grpcweb.go: Handler, an http.Handler that translates one request:
//     CORS, content types, the body (binary or base64 text), the native
//     call, and the response, whose trailers go in the body as the final
//     length-prefixed frame with the 0x80 flag.
//   - wire.go: gRPC-Web framing (message frames, trailer frame, base64).
//   - cors.go: origins and the preflight (OPTIONS) answer.
//   - native.go: Native, the per-client-connection HTTP/2 client that
//     carries the translated calls to the engine over an in-process
//     connection (a socketpair the engine serves like any client's,
//     with the browser's address as its remote address).
//   - server/web.go (meshd's server): the listener side: a gRPC-Web
//     listener sniffs each connection; the HTTP/2 preface (or ALPN h2)
//     goes to the engine as on any listener, anything else to a net/http
//     server (HTTP/1.1, standard library parsing, header and body limits)
//     whose handler is Handler.
//   - server/web_h2.go: gRPC-Web over HTTP/2. The engine lets gRPC-Web
//     content types and CORS preflights through as opaque streams on
//     grpc_web listeners only (engine.Config.GRPCWeb, checked where a
//     request is already known not to be gRPC); a Director wrapper sends
//     them to an in-process h2c net/http server whose handler is Handler,
//     with the browser connection's Native named in a header only meshd
//     sets and strips.
//   - director/protocol.go: the in-process connection's context marks
//     its calls "grpc-web" in the call record, for
//     meshd_grpc_web_requests_total and the access log.
//
// Client streaming cannot be expressed by gRPC-Web clients (a browser
// sends the whole body at once); a body with more than one message is
// answered with UNIMPLEMENTED.
package grpcweb
