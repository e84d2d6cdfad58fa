package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Director chooses the backend for each inbound stream.
type Director interface {
	// Direct is called once per inbound stream, after its request headers
	// are decoded, on the client connection's reader goroutine: it must not
	// block (no I/O, no waiting), or it stalls every stream of that client
	// connection. Picking from an in-memory snapshot, as meshd's balancer
	// does, is the intended use; dialing is done by the Pool, asynchronously.
	//
	// ctx is the client connection's context: it is cancelled when the
	// connection closes, not when the stream ends; the stream's deadline is
	// req.Deadline. req and everything it references are valid only until
	// Direct returns.
	//
	// A non-nil error ends the stream with a gRPC status: status.Code and
	// status.Message of err (so a *status.Status error keeps its code), sent
	// as a trailers-only response. Target.Done is not called then.
	Direct(ctx context.Context, req *Request) (Target, error)
}

// DirectorFunc adapts a function to the Director interface.
type DirectorFunc func(ctx context.Context, req *Request) (Target, error)

// Direct calls f(ctx, req).
func (f DirectorFunc) Direct(ctx context.Context, req *Request) (Target, error) { return f(ctx, req) }

// Request describes an inbound stream to the Director. It is reused between
// streams: it is valid only during Director.Direct.
type Request struct {
	// Method is the :path pseudo header, e.g. "/pkg.Svc/Method".
	Method string
	// Authority is :authority (or the Host header when :authority is absent).
	Authority string
	// Header holds the request's regular header fields (lowercase names,
	// pseudo headers excluded), values as on the wire (-bin values stay
	// base64).
	Header *Header
	// Deadline is the client's deadline from grpc-timeout; zero if none.
	Deadline time.Time
	// RemoteAddr is the client connection's remote address.
	RemoteAddr net.Addr
	// GRPCWeb reports an opaque stream, only with Config.GRPCWeb: a
	// gRPC-Web request (POST, application/grpc-web, +proto or -text) or a
	// CORS preflight (OPTIONS; Method is then its :path). It is not a
	// gRPC call: its :method is kept, its DATA is not read as gRPC
	// messages either way, and its response is forwarded as it comes.
	// The Director must send it to something that speaks gRPC-Web (meshd:
	// its in-process translator), never to a gRPC backend.
	GRPCWeb bool
}

// Header gives read access to decoded request header fields. Its Get method
// makes it satisfy interface{ Get(string) []string }, like metadata.MD.
type Header struct {
	fields []hpack.HeaderField
}

// Get returns the values of the fields named name (which must be lowercase,
// as HTTP/2 field names are), or nil.
func (h *Header) Get(name string) []string {
	var vs []string
	for _, f := range h.fields {
		if f.Name == name {
			vs = append(vs, f.Value)
		}
	}
	return vs
}

// NewHeader returns a Header over fields (lowercase names, no pseudo
// headers), for calling a Director outside the engine (tests, tools).
func NewHeader(fields []hpack.HeaderField) *Header { return &Header{fields: fields} }

// Fields returns the header fields in wire order. The slice must not be
// modified or retained past Director.Direct.
func (h *Header) Fields() []hpack.HeaderField { return h.fields }

// Target is the Director's decision for one stream.
type Target struct {
	// Addr is the backend's host:port. The backend speaks HTTP/2 over
	// whatever Upstream dials (e.g. TLS with ALPN h2), or, when Upstream
	// is nil, over Config.Dial or plain TCP (h2c with prior knowledge).
	Addr string

	// Upstream, if non-nil, is how to reach Addr: the Pool whose
	// connections the stream uses (its owner's, shared by every Server;
	// nil Upstream.Pool: the Server's own), its Dial (e.g. TLS with the
	// cluster's CA, server name and client certificate) and, by its
	// identity, which of the Pool's connections the stream may use.
	// Streams with different Upstreams never share a connection, even to
	// the same Addr. nil: the Server's own Pool over Config.Dial, or plain
	// TCP, and no cost beyond that.
	Upstream *Upstream

	// Timeout is the route's time budget; 0 means none. The effective
	// deadline is the earlier of the client's deadline and now+Timeout; it
	// is sent upstream as grpc-timeout and enforced by meshd.
	Timeout time.Duration
	// Header lists extra request header fields sent upstream (e.g.
	// traceparent, grpc-previous-rpc-attempts). A field here replaces every
	// inbound field of the same name. Names must be lowercase. May be nil.
	Header []hpack.HeaderField
	// Edits, if non-nil, are the route's header rules (edits.go), applied
	// to the request HEADERS sent upstream (before Header, which still
	// replaces) and to the response HEADERS forwarded to the client. nil:
	// none, and no cost.
	Edits *HeaderEdits
	// Authority, if non-empty, is the :authority sent upstream instead of
	// the client's (a cluster's virtual host).
	Authority string
	// Done, if non-nil, is called exactly once when the stream ends, with
	// the outcome. It may be called on any of meshd's goroutines (often a
	// connection reader) and must not block.
	Done func(Result)

	// TimeoutErr names the setting behind Timeout for the client, so that
	// a call cut by meshd's budget says which one (the grpc engine's
	// statuses). nil: every deadline gets the generic DEADLINE_EXCEEDED.
	// It applies only when now+Timeout is earlier than the client's own
	// deadline, i.e. when Timeout is what sets the effective deadline:
	//   - meshd's deadline timer ends the call with its status
	//     (status.Code and status.Message of it) instead of the generic
	//     one;
	//   - a backend's DEADLINE_EXCEEDED (grpc-status 4) arriving at most
	//     50ms before that deadline is the backend's timer for the
	//     grpc-timeout meshd sent firing a moment before meshd's own: the
	//     same timeout, so its grpc-message is replaced by TimeoutErr's
	//     (and a grpc-status-details-bin, which would contradict it,
	//     dropped). Other trailers pass through unchanged.
	// When the client's deadline is the earlier, it is the client's own
	// and keeps the generic status. The Director should hand out one
	// error value per setting, not build one per call.
	TimeoutErr error

	// Mirror, if non-nil, sends a copy of the call's request to another
	// backend as it arrives (shadow traffic, mirror.go); the copy's
	// response is discarded and nothing that happens to it reaches the
	// call. nil: no copy, and no cost.
	Mirror *Mirror

	// FaultDelay, when positive, holds the call back this long before its
	// first attempt opens: an injected delay (fault injection), carried
	// out by a timer, never by blocking the Director. It counts against
	// the call's deadline (which ends a call still delayed with
	// DEADLINE_EXCEEDED); request frames received meanwhile are held. 0:
	// none, and no cost.
	FaultDelay time.Duration

	// Hedge, if non-nil, hedges the call (hedge.go): after Hedge.Delay
	// without response HEADERS another attempt starts elsewhere, and the
	// first attempt whose response commits the call wins. It needs a
	// retryable call (Retry, RetryBufferBytes): the attempts replay the
	// request from its log. nil: no hedging, and no cost.
	Hedge *Hedge

	// The call's resilience settings (retry.go). Their zero values turn
	// them off and cost nothing: no buffer, no timer, no lock.

	// IdleTimeout ends the call, with IdleErr's status, once no request or
	// response DATA (nor response HEADERS) has crossed meshd for this long.
	// 0: none.
	IdleTimeout time.Duration
	// IdleErr is the status error the client gets when IdleTimeout fires
	// (status.Code and status.Message of it); nil: DEADLINE_EXCEEDED.
	IdleErr error
	// Retry, with RetryBufferBytes > 0, makes the call retryable: meshd
	// keeps a copy of the request DATA for replay, holds each attempt's
	// response HEADERS until its first message (or its status, or
	// HeaderHoldLimit) and, when an attempt fails before anything of its
	// response was forwarded to the client,
	// calls Retry (on one of meshd's goroutines; it must not block) with
	// how the attempt ended. ok true: after backoff, a new upstream stream
	// is opened to next.Addr (through next.Upstream) with next.Header and
	// the request replayed; next's Done and resilience fields are ignored,
	// the first Target's stay. ok false: the attempt's outcome is the
	// call's. Retry is never called concurrently with itself or with Done,
	// and never after Done.
	Retry func(RetryInfo) (next Target, backoff time.Duration, ok bool)
	// RetryBufferBytes caps the request bytes kept for replay; once the
	// request is larger the call is no longer retried and the copy freed.
	RetryBufferBytes int64
	// RetryBuffer, if non-nil, is a limit shared by many calls on the
	// bytes they keep for replay; a call it refuses is no longer retried.
	RetryBuffer BufferLimiter
	// PerTryTimeout bounds each attempt of a retryable call until its
	// response starts; the attempt then ends with PerTryErr's status
	// (nil: DEADLINE_EXCEEDED) and may be retried. Once the attempt's
	// response HEADERS arrived (and are held, waiting for its first
	// message or its status), its remainder bounds the hold instead: the
	// HEADERS then go out and the call commits. 0: none (the hold is
	// bounded by HeaderHoldLimit).
	PerTryTimeout time.Duration
	// PerTryErr is the status of an attempt cut by PerTryTimeout.
	PerTryErr error

	// Reroute, if non-nil, moves the call to another backend when it never
	// reached this one (see Rerouter). It costs calls that reach their
	// backend nothing: such a call forwarded nothing but its request
	// HEADERS, and its request DATA is still held in the call, so no copy
	// is kept. A call that Retry and RetryBufferBytes make retryable
	// leaves this to Retry.
	Reroute Rerouter

	// The cluster's limit on calls waiting for an upstream stream
	// (meshd's max_pending). nil: no limit, and no cost.

	// Pending, if non-nil, counts the call while it waits for an upstream
	// stream: for a connection being dialled, or for a new connection
	// because every one to the backend is at its MAX_CONCURRENT_STREAMS.
	// A call that finds a free stream slot never touches it. When
	// AcquirePending reports false the call is refused at once with
	// PendingErr's status (no reroute, no retry); otherwise
	// ReleasePending is called exactly once when the wait ends: the
	// stream is linked, the attempt fails or is abandoned, or the call
	// ends. Both may be called on any of meshd's goroutines and must not
	// block.
	Pending PendingLimiter
	// PendingErr is the status error (status.Code and status.Message of
	// it) a call refused by Pending gets; nil: RESOURCE_EXHAUSTED with a
	// generic message.
	PendingErr error
}

// PendingLimiter bounds the calls waiting for an upstream stream
// (Target.Pending). Every true AcquirePending is paired with one
// ReleasePending.
type PendingLimiter interface {
	AcquirePending() bool
	ReleasePending()
}

// Rerouter re-targets a call that never reached its backend (Target.Reroute).
// An interface, not a func field, so that the Director can hand over the
// per-call state it already allocated (a pointer) at no cost.
type Rerouter interface {
	// Reroute is called when the call's upstream stream could not be
	// opened (the dial failed, the backend has no stream capacity) or the
	// backend refused it (REFUSED_STREAM, excluded by GOAWAY, connection
	// lost before the stream was processed) while nothing of the request
	// but its HEADERS had been forwarded. failed is how that attempt ended
	// (NotReached true, Committed false).
	//
	// ok true: the same call goes, at once, to next.Addr through
	// next.Upstream, with next.Header added to its request HEADERS (a field
	// there replaces every earlier one of the same name); next's other
	// fields are ignored, the first Target's stay. ok false: failed is the
	// call's outcome (Done reports it).
	//
	// It runs on one of meshd's goroutines and must not block; it is never
	// called concurrently with itself or with Done, and never after Done.
	// It must bound the reroutes of a call (a failure to open a stream can
	// be immediate, and the next attempt then starts on the same stack).
	// A refused stream whose request DATA was already forwarded is not
	// rerouted: the client gets REFUSED_STREAM, which gRPC clients retry
	// transparently.
	Reroute(failed Result) (next Target, ok bool)
}

// Result is the outcome of one proxied stream.
type Result struct {
	// Code is the final grpc-status the client saw: the backend's, or the
	// one meshd produced. When meshd had to reset the client stream instead
	// of sending its status, because part of a response message had already
	// been forwarded (Stats.MidMessageResets), Code is still the status
	// meshd meant (DEADLINE_EXCEEDED, UNAVAILABLE...): the client sees
	// DEADLINE_EXCEEDED if its own deadline has passed, CANCELLED otherwise.
	Code codes.Code
	// Err is the meshd-side error (deadline, cancellation, dial failure,
	// lost connection, protocol error); nil when the backend answered.
	Err error
	// NotReached reports that the request never reached the backend (its
	// HEADERS were never written, the backend refused the stream or its
	// GOAWAY excluded it, or the dial failed): retrying it is safe.
	NotReached bool
	// Committed reports that response headers or data were forwarded to the
	// client, after which meshd can no longer answer on the backend's behalf.
	Committed bool
	// BytesIn and BytesOut count gRPC message bytes forwarded
	// client→backend and backend→client: DATA payload without the 5-byte
	// message prefixes, as the grpc engine counts them.
	BytesIn, BytesOut int64
	// Attempt names the attempt the Result concerns on a hedged call
	// (Hedger): 0 for the first attempt, the id Hedger.Hedge gave the
	// others. Always 0 for calls that are not hedged.
	Attempt int
}

// Errors reported in Result.Err.
var (
	// ErrClientGone: the client reset the stream or its connection closed.
	ErrClientGone = errors.New("engine: client cancelled the stream")
	// ErrDeadline: the effective deadline passed inside meshd.
	ErrDeadline = errors.New("engine: deadline exceeded")
	// ErrUpstreamLost: the backend connection closed before the stream ended.
	ErrUpstreamLost = errors.New("engine: upstream connection lost")
	// ErrMessageTooLarge: a message exceeded MaxRecvMsgSize or MaxSendMsgSize.
	ErrMessageTooLarge = errors.New("engine: message too large")
	// ErrRefused: the backend refused the stream or excluded it with GOAWAY.
	ErrRefused = errors.New("engine: backend refused the stream")
	// ErrPerTryTimeout: Target.PerTryTimeout cut the attempt.
	ErrPerTryTimeout = errors.New("engine: per-try timeout")
	// ErrIdleTimeout: Target.IdleTimeout passed without a message.
	ErrIdleTimeout = errors.New("engine: idle timeout")
)

type endMode uint8

const (
	endStatus     endMode = iota // answer the client with a meshd status (a reset if it holds part of a message)
	endForward                   // forward the backend's final frame
	endRST                       // reset the client stream
	endClientGone                // the client stream is already gone
)

// ending describes how a call ends.
type ending struct {
	mode       endMode
	st         *status.Status // endStatus
	httpStatus string         // endStatus: ":status" of an early rejection ("" = 200)
	final      op             // endForward
	rst        http2.ErrCode  // endRST
	upCode     http2.ErrCode  // RST_STREAM code for a still-open upstream stream
	code       codes.Code     // Result.Code
	err        error          // Result.Err
	notReached bool
	fl         *flusher // the calling reader's flusher, nil elsewhere
}

// dataOp copies p into a pooled buffer and returns the DATA op for it.
func (sh *shared) dataOp(p []byte, end bool, src *hstream) op {
	o := op{kind: opData, end: end, src: src}
	if len(p) > 0 {
		b := sh.getBuf(len(p))
		n := copy(*b, p)
		o.buf = b
		o.data = (*b)[:n]
	}
	return o
}

// dropOp releases an op that will not be written, returning its credit.
func (sh *shared) dropOp(o *op, cs *[]credit) {
	if o.kind == opData && len(o.data) > 0 {
		if o.src != nil {
			*cs = append(*cs, credit{c: o.src.c, st: o.src, n: int64(len(o.data))})
		}
	}
	if o.buf != nil && !o.partial {
		sh.putBuf(o.buf)
	}
	*o = op{}
}

// forwardUp sends a request frame to the backend stream, or holds it until
// the stream is linked.
func (cl *call) forwardUp(o op, fl *flusher) {
	if s := cl.shadow; s != nil && o.kind == opHeaders {
		s.mirrorTrailers(o.fields)
	}
	up := cl.up.Load()
	if up == nil || cl.logging() {
		cl.holdUp(nil, o, fl)
		return
	}
	uc := up.c
	uc.mu.Lock()
	ok := uc.pushLocked(up, o, fl)
	if ok {
		cl.upData = true
	}
	uc.mu.Unlock()
	if ok {
		return
	}
	if cl.reroutable() {
		// The backend may have refused up, the call be moving to another
		// one: it needs the frame then.
		cl.holdUp(up, o, fl)
		return
	}
	var cs []credit
	cl.sc.sh.dropOp(&o, &cs)
	applyCredits(cs)
}

// holdUp is forwardUp's slow path: under cl.mu, it logs the frame of a
// retryable call, and holds it while the call has no upstream stream (or
// only left, the stream that refused a push), else sends it.
func (cl *call) holdUp(left *hstream, o op, fl *flusher) {
	cl.mu.Lock()
	if rs := cl.rs; rs != nil {
		rs.logOpLocked(&o)
	}
	up := cl.up.Load()
	if up == nil || up == left {
		if cl.stateLocked() != callDone {
			cl.pending = append(cl.pending, o)
			cl.mu.Unlock()
			return
		}
		cl.mu.Unlock()
		var cs []credit
		cl.sc.sh.dropOp(&o, &cs)
		applyCredits(cs)
		return
	}
	cl.mu.Unlock()
	uc := up.c
	uc.mu.Lock()
	ok := uc.pushLocked(up, o, fl)
	if ok {
		cl.upData = true
	}
	uc.mu.Unlock()
	if !ok {
		var cs []credit
		cl.sc.sh.dropOp(&o, &cs)
		applyCredits(cs)
	}
}

// forwardUpData sends request DATA to the backend stream, or holds it until
// the stream is linked.
func (cl *call) forwardUpData(p []byte, end bool, fl *flusher) {
	up := cl.up.Load()
	if up == nil || cl.logging() {
		cl.holdUpData(nil, p, end, fl)
		return
	}
	uc := up.c
	uc.mu.Lock()
	ok := uc.pushDataLocked(up, p, end, cl.down, fl)
	if ok {
		cl.upData = true
	}
	uc.mu.Unlock()
	if ok {
		return
	}
	if cl.reroutable() {
		cl.holdUpData(up, p, end, fl) // as in forwardUp
		return
	}
	cl.down.c.credit(cl.down, int64(len(p)))
}

// holdUpData is holdUp for DATA.
func (cl *call) holdUpData(left *hstream, p []byte, end bool, fl *flusher) {
	cl.mu.Lock()
	if rs := cl.rs; rs != nil {
		rs.logDataLocked(p, end)
	}
	up := cl.up.Load()
	if up == nil || up == left {
		done := cl.stateLocked() == callDone
		if !done {
			var t *op
			if n := len(cl.pending); n > 0 {
				t = &cl.pending[n-1]
			}
			if o, packed := cl.sc.sh.appendData(t, p, end, cl.down); !packed {
				cl.pending = append(cl.pending, o)
			}
		}
		cl.mu.Unlock()
		if done {
			cl.down.c.credit(cl.down, int64(len(p)))
		}
		return
	}
	cl.mu.Unlock()
	uc := up.c
	uc.mu.Lock()
	ok := uc.pushDataLocked(up, p, end, cl.down, fl)
	if ok {
		cl.upData = true
	}
	uc.mu.Unlock()
	if !ok {
		cl.down.c.credit(cl.down, int64(len(p)))
	}
}

// forwardDownData sends response DATA, received on up, to the client
// stream.
func (cl *call) forwardDownData(up *hstream, p []byte, fl *flusher) {
	c := &cl.sc.conn
	c.mu.Lock()
	ok := c.pushDataLocked(cl.down, p, false, up, fl)
	if ok {
		cl.down.respStarted = true
	}
	c.mu.Unlock()
	if !ok {
		up.c.credit(up, int64(len(p)))
	}
}

// forwardDown sends a response frame, received on up, to the client
// stream.
func (cl *call) forwardDown(up *hstream, o op, fl *flusher) {
	if cl.mirror != nil {
		return // a shadow's response is discarded (HEADERS carry no credit)
	}
	if !cl.admit(up, fl) {
		return // a retried call's abandoned attempt
	}
	if it := cl.idle; it != nil {
		it.touch()
	}
	c := &cl.sc.conn
	c.mu.Lock()
	ok := c.pushLocked(cl.down, o, fl)
	if ok {
		cl.down.respStarted = true
	}
	c.mu.Unlock()
	if !ok {
		var cs []credit
		c.sh.dropOp(&o, &cs)
		applyCredits(cs)
	}
}

// resetUp resets the upstream stream up with code (CANCEL when 0) and
// reports whether its HEADERS were never written: the backend never saw
// the stream, so the call did not reach it.
func resetUp(up *hstream, code http2.ErrCode, cs *[]credit, fl *flusher) (neverSent bool) {
	if code == 0 {
		code = http2.ErrCodeCancel
	}
	uc := up.c
	uc.mu.Lock()
	neverSent = up.id == 0
	uc.resetLocked(up, code, cs, fl)
	uc.mu.Unlock()
	return neverSent
}

// ownerSlack is how early a backend may answer DEADLINE_EXCEEDED before
// meshd's deadline for Target.Timeout and still be taken as ending the call
// for that deadline (Target.TimeoutErr): grpc-timeout is encoded with
// truncation, and the backend's timer can fire just before meshd's own.
// The grpc engine uses the same slack.
const ownerSlack = 50 * time.Millisecond

// ownTimeoutTrailers rewrites the final response fields of a backend's
// DEADLINE_EXCEEDED (code is their grpc-status) to name Target.TimeoutErr
// when the deadline behind them is meshd's Target.Timeout (see TimeoutErr).
// Otherwise, the common case, it costs a comparison and returns fields as
// they are. fields is the call's own copy (filterResponse) and is
// rewritten in place. Backend reader goroutine.
func (cl *call) ownTimeoutTrailers(code codes.Code, fields []hpack.HeaderField) []hpack.HeaderField {
	if code != codes.DeadlineExceeded || !cl.timeoutOwned || time.Until(cl.deadline) > ownerSlack {
		return fields
	}
	msg := encodeGrpcMessage(status.Convert(cl.target.TimeoutErr).Message())
	out, set := fields[:0], false
	for _, f := range fields {
		switch f.Name {
		case "grpc-status-details-bin":
			// Its message would replace grpc-message at the client.
			continue
		case "grpc-message":
			if set {
				continue
			}
			f.Value, set = msg, true
		}
		out = append(out, f)
	}
	if !set {
		out = append(out, hpack.HeaderField{Name: "grpc-message", Value: msg})
	}
	return out
}

// onReqData forwards client DATA (client reader goroutine). flen is the
// frame's flow-controlled length; padding was already credited.
func (cl *call) onReqData(data []byte, end bool, fl *flusher) {
	sh := cl.sc.sh
	if len(data) > 0 && !cl.opaque {
		prefix := cl.reqTrack.prefixBytes
		if n, bad := cl.reqTrack.feed(data, uint64(sh.cfg.MaxRecvMsgSize)); bad {
			cl.sc.credit(cl.down, int64(len(data)))
			cl.fail(codes.ResourceExhausted,
				fmt.Sprintf("meshd: received message larger than max (%d vs. %d)", n, sh.cfg.MaxRecvMsgSize),
				ErrMessageTooLarge, false)
			return
		}
		cl.bytesIn.Add(int64(len(data)) - int64(cl.reqTrack.prefixBytes-prefix))
		if it := cl.idle; it != nil {
			it.touch()
		}
	}
	if s := cl.shadow; s != nil {
		s.mirrorData(data, end) // before the primary's forwarding may release data
	}
	cl.forwardUpData(data, end, fl)
}

// onRespData forwards backend DATA (backend reader goroutine).
func (cl *call) onRespData(up *hstream, data []byte, end bool, fl *flusher) {
	if cl.mirror != nil {
		cl.shadowRespData(up, data, end)
		return
	}
	if !cl.admit(up, fl) {
		up.c.credit(up, int64(len(data)))
		return // a retried call's abandoned attempt
	}
	sh := cl.sc.sh
	prefix := cl.respTrack.prefixBytes
	if len(data) > 0 && !cl.opaque {
		limit := uint64(math.MaxUint64) // MaxSendMsgSize 0: no limit, but still count prefixes
		if sh.cfg.MaxSendMsgSize > 0 {
			limit = uint64(sh.cfg.MaxSendMsgSize)
		}
		if n, bad := cl.respTrack.feed(data, limit); bad {
			up.c.credit(up, int64(len(data)))
			cl.streamEnded(up, ending{
				mode: endStatus, code: codes.ResourceExhausted, err: ErrMessageTooLarge,
				st: status.New(codes.ResourceExhausted, fmt.Sprintf("meshd: response message larger than max (%d vs. %d)", n, sh.cfg.MaxSendMsgSize)),
			})
			return
		}
	}
	cl.bytesOut.Add(int64(len(data)) - int64(cl.respTrack.prefixBytes-prefix))
	if it := cl.idle; it != nil {
		it.touch()
	}
	if end {
		// DATA with END_STREAM and no trailers: forwarded as is; the client
		// reports the missing status itself.
		cl.streamEnded(up, ending{mode: endForward, final: sh.dataOp(data, end, up), code: codes.Internal, fl: fl})
		return
	}
	cl.forwardDownData(up, data, fl)
}

// credit returns n bytes received on st to the peer at once (data meshd
// dropped or padding).
func (c *conn) credit(st *hstream, n int64) {
	c.mu.Lock()
	c.addCreditLocked(st, n)
	c.mu.Unlock()
}
