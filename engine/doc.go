// Package engine is meshd's frame-level gRPC forwarding engine.
//
// A Server accepts HTTP/2 cleartext (prior-knowledge) connections from gRPC
// clients. For each stream it decodes the request headers once, asks a
// Director for a Target (backend address, route timeout, extra headers) and
// forwards the stream to that backend over a pooled HTTP/2 connection (of
// the Pool the Target's Upstream names, which may serve many Servers, or
// of the Server's own):
// request and response HEADERS are re-encoded (hop-by-hop fields dropped,
// grpc-timeout recomputed), DATA frames are forwarded as they are, and
// END_STREAM, RST_STREAM and trailers are propagated. Messages are never
// decoded: only their 5-byte length prefixes are followed, to enforce
// MaxRecvMsgSize.
//
// Why frames rather than messages: a grpc-go based pass-through proxy spends
// most of its CPU in grpc-go's own stream machinery (per-message framing,
// buffering, goroutine hand-offs). Forwarding frames keeps the per-call work
// to a header decode/encode and a few buffer copies.
//
// Flow control is passed through: meshd returns WINDOW_UPDATE to a sender
// only for bytes it has written to the receiving side, so a slow reader
// back-pressures the writer and the data buffered in meshd is bounded by the
// windows it advertises (Config.InitialWindowSize per stream,
// Config.ConnWindowSize per connection). The memory it takes stays close
// to that byte count: DATA is copied into pooled buffers of the frame's
// size class, and while a stream has DATA waiting, more DATA for it is
// packed into the same buffers rather than each frame holding its own.
//
// Each connection, client or backend, has one reader goroutine and one
// writer goroutine; the writer batches queued frames into one buffered
// write and flushes when its queue is empty. When a connection's writer is
// idle, the reader that queued frames for it writes them itself (a
// non-blocking write, just before the reader would block), which saves two
// goroutine hand-offs per unary call; the writer goroutine takes over
// whatever the socket does not accept at once. The Director runs on the
// client connection's reader goroutine and must not block.
//
// meshd's own failures reach clients as gRPC statuses, in trailers-only
// responses or, once the response has started, in trailers: a Director
// error with its own code, a failed dial or a lost backend connection as
// UNAVAILABLE, a spent deadline as DEADLINE_EXCEEDED, an oversized message
// as RESOURCE_EXHAUSTED. A call that never reached a backend (the dial
// failed, no stream capacity, or the backend refused the stream before any
// request DATA went to it) is offered to Target.Reroute, which may send the
// same call, still holding its request, to another backend. Otherwise
// streams a backend never processed (REFUSED_STREAM, or excluded by its
// GOAWAY) are refused to the client with REFUSED_STREAM, which gRPC clients
// retry transparently, and reported with Result.NotReached.
//
// One ending cannot carry a status: when meshd ends a call (its deadline,
// a backend lost, a bad response) after part of a response message has
// been written to the client, trailers would end the stream inside that
// message, and clients report that as a malformed response (grpc-go:
// INTERNAL "unexpected EOF"), not as meshd's status. meshd then resets the
// client stream with RST_STREAM(CANCEL): grpc-go clients report it as
// DEADLINE_EXCEEDED when their own deadline has passed (the usual case for
// a deadline, which meshd computes from the client's grpc-timeout) and as
// CANCELLED otherwise. Result.Code keeps the status meshd meant, and
// Stats.MidMessageResets counts these calls. To know where message
// boundaries are, meshd follows the 5-byte prefixes of the response DATA
// as its writer takes it: a few integer operations per frame, no copy.
//
// Retries (retry.go): a Target with a Retry callback keeps a copy of the
// request DATA (and trailers) it forwards, within RetryBufferBytes and the
// shared RetryBuffer, for as long as the call may still be retried. An
// attempt that fails before the call commits (the backend refused or reset
// the stream, its connection was lost or could not be opened, the
// per-try timeout passed, or it answered trailers-only) is reset and
// handed to Retry, which decides with the route's policy; the backoff runs
// on a timer, never on a connection reader, and the next attempt replays
// the copy before forwarding live again. A retryable call holds an
// attempt's response HEADERS until its next frame (at most the per-try
// timeout's remainder, else HeaderHoldLimit), so that a status right
// after them, with no message, is retried too; the first response
// message (or the hold's end) commits the call: from then on it is never
// retried and the copy is released. Calls without Retry keep nothing,
// hold nothing and pay nothing.
//
// Traffic policies: Target.FaultDelay holds a call back before its first
// attempt on a timer (fault injection; the deadline runs meanwhile), and
// Target.Mirror sends a copy of the request to another backend as a
// shadow call whose response is discarded and which never affects the
// call (mirror.go). Target.Hedge runs more than one attempt of a
// retryable call at once, replayed from the retry copy: the first whose
// response commits wins and the others are reset (hedge.go).
//
// Strict at the edge of the protocol (closed.go, grpcwire.go): client
// streams follow RFC 9113's states, and a frame that breaks them gets the
// answer the RFC names: a new stream id below one already used, or DATA
// and HEADERS on a stream the client had ended, a connection error; the
// same after the client's own RST_STREAM, a stream error STREAM_CLOSED;
// frames that crossed a reset of meshd's are discarded. A request the RFC
// calls malformed (connection-specific header fields, te other than
// "trailers", missing or empty pseudo-header fields, a second HEADERS
// without END_STREAM, pseudo-header fields in trailers, DATA that does not
// add up to its content-length) is reset with PROTOCOL_ERROR and never
// reaches the Director or a backend. When a response ends while the
// client is still sending, meshd confirms the response with a PING before
// it asks the client to stop (closed.go), so the client's stream is held
// to the same rules until then.
//
// A call's life (lifecycle.go) is an explicit state, starting, delayed,
// opening, linked, held, backoff, committed, done, changed only under the call's mutex
// by one transition function; connection readers, the Pool and the
// call's timers post it events. That file also gives the lock order and
// the goroutines that may end a call.
package engine
