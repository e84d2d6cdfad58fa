// Package proxy is meshd's grpc-go based data path: a transparent
// grpc.StreamHandler, installed as the server's UnknownServiceHandler, that
// routes every call by its full method name and forwards it to an endpoint
// picked from the route's cluster.
//
// Payloads are never decoded: a pass-through codec (encoding.CodecV2 over
// mem.BufferSlice) hands each received message's buffers to the other side by
// reference. Response headers are relayed the moment the backend sends them,
// trailers-only responses stay trailers-only, and the inbound deadline and
// cancellation carry to the backend because the upstream context derives
// from the inbound one.
//
// Resilience (retry.go): calls are retried on another endpoint while they
// are not committed (no response header or message has reached the client),
// replaying the request messages kept for that, within per-call and
// process-wide byte limits, a per-cluster retry budget, and the deadline.
// Calls that never reached a backend are always retried transparently.
// Route timeouts, max_grpc_timeout and idle timeouts end calls with
// DEADLINE_EXCEEDED; per-cluster concurrency limits and route rate limits
// (limits.go, budget.go: engine-neutral types) refuse calls at once with
// RESOURCE_EXHAUSTED rather than queue them.
//
// Every status meshd produces itself is decided in one place (errors.go):
// no route is UNIMPLEMENTED, no healthy endpoint UNAVAILABLE, a deadline
// spent inside meshd DEADLINE_EXCEEDED, limits RESOURCE_EXHAUSTED.
package proxy
