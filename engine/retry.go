package engine

import (
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file holds the per-call resilience the Director can ask for in
// Target: retries (replaying the request on a new upstream stream while
// nothing of the response reached the client) and the idle timeout.
//
// A retryable call keeps a copy of the request DATA forwarded so far (the
// log). An attempt is the life of one upstream stream; it commits the call
// when its first response message is forwarded to the client, and from
// then on the call is an ordinary one. Its response HEADERS are held until
// then (state held, lifecycle.go; retryState.heldHdr): many servers send header metadata and
// then fail with no message (grpc-go's SetHeader, most Java and Python
// servers), which is as retryable as a trailers-only answer. The hold ends
// with the attempt's next frame, or when the hold timer fires (the per-try
// timeout's remainder, else HeaderHoldLimit): then the HEADERS go out and
// the call commits, so a slow stream is delayed by the hold at most. An
// attempt that ends before committing (trailers-only answer, trailers
// after held HEADERS, reset, refused, lost connection, per-try timeout)
// is handed to Target.Retry; if it says retry, the call leaves the stream
// (resets it; late frames from it are ignored), waits the backoff on a
// timer and links a new upstream stream, whose pending frames are the
// replayed log. The client stream is untouched meanwhile: request DATA
// keeps arriving, and goes to the log and to the call's pending frames.
//
// Which attempt is current is the call's (lifecycle.go): cl.epoch numbers
// it, cl.up is its linked stream (nil between attempts), and an event of
// an attempt the call left (a frame or the end of a stream that is not
// cl.up, a per-try or backoff timer armed for another epoch) is stale.

// BufferLimiter is a byte budget shared by calls (meshd's
// max_retry_buffer_bytes). Every true TryAcquire is paired with a Release of
// the same n.
type BufferLimiter interface {
	TryAcquire(n int64) bool
	Release(n int64)
}

// RetryInfo describes an attempt of a retryable call that failed before the
// call committed.
type RetryInfo struct {
	// Result is the attempt's outcome (Committed is false). NotReached
	// reports that the request never reached the backend.
	Result
	// PerTry reports that Target.PerTryTimeout ended the attempt.
	PerTry bool
	// Took is how long the attempt lasted.
	Took time.Duration
	// Deadline is the call's effective deadline; zero if none.
	Deadline time.Time
}

// HeaderHoldLimit bounds how long a retryable call holds an attempt's
// response HEADERS waiting for its next frame when the Target has no
// PerTryTimeout (with one, the per-try timeout's remainder bounds it).
// When it passes the HEADERS are forwarded and the call commits: a server
// that sends HEADERS early and its first message much later (a
// server-streaming watch) is delayed this much once, and is then no
// longer retried.
const HeaderHoldLimit = time.Second

// replayChunk is the DATA payload size of replayed request frames.
const replayChunk = 16 << 10

// retryState is a retryable call's replay log and attempt bookkeeping.
// Fields are guarded by call.mu except the atomics; where the call is in
// its life (backoff, committed) is the call's state, not the log's.
type retryState struct {
	limit  int64
	shared BufferLimiter

	// logging: the log holds the whole request so far (the call has not
	// committed, and the request stayed within the limits). Read without
	// call.mu on the client reader's fast path.
	logging atomic.Bool

	log      []byte              // request DATA forwarded so far
	end      bool                // the client's END_STREAM is in the log
	trailers []hpack.HeaderField // request trailers, if the client sent any
	held     int64               // bytes of log taken from shared
	start    time.Time           // the current attempt's start
	perTry   *time.Timer         // the current attempt's per-try timer
	heldHdr  []hpack.HeaderField // state held: the current attempt's response HEADERS, not yet forwarded
	hold     *time.Timer         // state held: posts evHold when the hold runs out
	backoff  *time.Timer         // the pending retry
	last     ending              // backoff: the failure to report if no retry happens
	next     Target              // backoff: where the next attempt goes
	perTryD  time.Duration       // Target.PerTryTimeout
	perTrySt *status.Status      // what a per-try timeout answers
}

// idleTimer ends a call after d without activity. Activity is one atomic
// store; the timer posts evIdle, and the transition re-arms it for the
// remaining time when it fired early, so no timer is reset per frame.
type idleTimer struct {
	cl    *call
	st    *status.Status // what the client gets
	d     time.Duration
	start time.Time
	last  atomic.Int64 // nanoseconds since start of the last activity
	t     *time.Timer  // guarded by cl.mu
}

func (it *idleTimer) touch() { it.last.Store(int64(time.Since(it.start))) }

// fire runs on the timer's goroutine.
func (it *idleTimer) fire() { it.cl.post(event{kind: evIdle}) }

// idleLocked is the transition for evIdle: the call ends if it was idle
// for the whole timeout, else the timer waits for the rest of it. Called
// with cl.mu held.
func (cl *call) idleLocked(a *after) {
	it := cl.idle
	idle := time.Since(it.start) - time.Duration(it.last.Load())
	if idle < it.d {
		it.t.Reset(it.d - idle)
		return
	}
	cl.endLocked(ending{mode: endStatus, st: it.st, code: it.st.Code(), err: ErrIdleTimeout}, false, a)
}

// upstreamLost is how a call whose backend connection closed under the
// stream ends (unless a retry replaces it).
func upstreamLost() ending {
	return ending{mode: endStatus, st: status.New(codes.Unavailable, "meshd: upstream connection lost"),
		code: codes.Unavailable, err: ErrUpstreamLost}
}

// statusOf is err's status, DEADLINE_EXCEEDED with msg when err is nil.
func statusOf(err error, msg string) *status.Status {
	if err == nil {
		return status.New(codes.DeadlineExceeded, msg)
	}
	return status.Convert(err)
}

// newResilience applies the Target's idle timeout and retry settings
// (their timers are armed by start). Client reader, before the call is
// shared.
func (cl *call) newResilience() {
	t := &cl.target
	if t.IdleTimeout > 0 {
		cl.idle = &idleTimer{cl: cl, st: statusOf(t.IdleErr, "meshd: idle timeout"), d: t.IdleTimeout, start: time.Now()}
	}
	if t.Retry == nil || t.RetryBufferBytes <= 0 {
		return
	}
	rs := &retryState{limit: t.RetryBufferBytes, shared: t.RetryBuffer, start: time.Now(),
		perTryD: t.PerTryTimeout, perTrySt: statusOf(t.PerTryErr, "meshd: per-try timeout exceeded")}
	rs.logging.Store(true)
	cl.rs = rs
}

// armPerTryLocked starts the current attempt's per-try timer, which posts
// evPerTry for the attempt's epoch.
func (cl *call) armPerTryLocked() {
	rs := cl.rs
	if rs == nil || rs.perTryD <= 0 {
		return
	}
	epoch, st := cl.epoch, rs.perTrySt
	rs.perTry = time.AfterFunc(rs.perTryD, func() {
		cl.post(event{kind: evPerTry, epoch: epoch,
			end: ending{mode: endStatus, st: st, code: st.Code(), err: ErrPerTryTimeout}})
	})
}

// holdHeaders holds fields, the response HEADERS (not trailers-only) of
// up, instead of forwarding them, when the call is retryable and up is its
// current attempt's stream (linked → held), and arms the hold timer. It
// reports false when the call does not hold them: the caller forwards them
// (forwardDown), which commits the call. Backend reader goroutine; only
// for calls with a retry state (cl.rs), so other calls pay a nil check.
func (cl *call) holdHeaders(up *hstream, fields []hpack.HeaderField) bool {
	cl.mu.Lock()
	if cl.hg != nil && up != cl.up.Load() {
		// A hedged call's sibling answers (hedge.go): it becomes the
		// current attempt, or loses.
		var cs []credit
		held := cl.siblingHeadersLocked(up, &cs) && cl.holdHeadersLocked(up, fields)
		cl.mu.Unlock()
		applyCredits(cs)
		return held
	}
	defer cl.mu.Unlock()
	return cl.holdHeadersLocked(up, fields)
}

// holdHeadersLocked is holdHeaders under cl.mu.
func (cl *call) holdHeadersLocked(up *hstream, fields []hpack.HeaderField) bool {
	rs := cl.rs
	if cl.stateLocked() != callLinked || up != cl.up.Load() || !rs.logging.Load() {
		// Not the current attempt (admit drops the frame), or the request
		// outgrew the log: no retry could follow, nothing to wait for.
		return false
	}
	d := HeaderHoldLimit
	if rs.perTryD > 0 {
		if d = rs.perTryD - time.Since(rs.start); d <= 0 {
			return false // the per-try timeout is due: its event is stale once committed
		}
	}
	if rs.perTry != nil {
		rs.perTry.Stop() // the hold timer takes over its remainder
		rs.perTry = nil
	}
	rs.heldHdr = fields
	cl.sc.sh.stats.HeadersHeld.Add(1)
	cl.setStateLocked(callHeld)
	if it := cl.idle; it != nil {
		it.touch()
	}
	epoch := cl.epoch
	rs.hold = time.AfterFunc(d, func() { cl.post(event{kind: evHold, epoch: epoch}) })
	return true
}

// logging reports whether request frames must go through the log.
func (cl *call) logging() bool {
	rs := cl.rs
	return rs != nil && rs.logging.Load()
}

// logDataLocked appends request DATA to the log, or gives the log up when
// it would pass a limit.
func (rs *retryState) logDataLocked(p []byte, end bool) {
	if !rs.logging.Load() {
		return
	}
	if n := int64(len(p)); n > 0 {
		if int64(len(rs.log))+n > rs.limit || (rs.shared != nil && !rs.shared.TryAcquire(n)) {
			rs.dropLogLocked()
			return
		}
		rs.held += n
		rs.log = append(rs.log, p...)
	}
	if end {
		rs.end = true
	}
}

// logOpLocked logs a request frame held as an op (pending DATA, trailers).
func (rs *retryState) logOpLocked(o *op) {
	switch o.kind {
	case opData:
		rs.logDataLocked(o.data, o.end)
	case opHeaders:
		if rs.logging.Load() {
			rs.trailers, rs.end = o.fields, true
		}
	}
}

// dropLogLocked frees the log: the call can no longer be replayed.
func (rs *retryState) dropLogLocked() {
	rs.logging.Store(false)
	rs.log, rs.trailers = nil, nil
	if rs.shared != nil && rs.held > 0 {
		rs.shared.Release(rs.held)
	}
	rs.held = 0
}

// stopLocked releases everything when the call ends.
func (rs *retryState) stopLocked() {
	if rs.perTry != nil {
		rs.perTry.Stop()
	}
	if rs.hold != nil {
		rs.hold.Stop()
		rs.hold = nil
	}
	if rs.backoff != nil {
		rs.backoff.Stop()
	}
	rs.dropLogLocked()
	rs.last = ending{}
}

// retryableNotReached reports whether a failure to open the upstream
// stream is one a retry or a reroute may mend (evOpenFailed): not the
// deadline, not meshd shutting down, not a Target without an address.
func retryableNotReached(code codes.Code, err error) bool {
	return code == codes.Unavailable && err != nil &&
		!errors.Is(err, ErrDeadline) && !errors.Is(err, errPoolClosed) && !errors.Is(err, errNoAddr)
}

// Failures of a call that did not reach a backend and that another
// attempt cannot mend.
var (
	errPoolClosed = errors.New("engine: pool closed")       // meshd is shutting down
	errNoAddr     = errors.New("engine: empty Target.Addr") // the Director named no backend
)

// retryLocked is the transition for the end of an attempt of a retryable
// call that has not committed and still holds its whole request: the call
// leaves the attempt (its stream is reset, its frames are dropped from
// here) and asks Target.Retry. Yes: backoff, then the next attempt
// (backoffPassedLocked). No: the call ends with the attempt's outcome.
// Called with cl.mu held.
func (cl *call) retryLocked(ev *event, a *after) {
	rs := cl.rs
	e := ev.end
	held := rs.heldHdr // state held: the attempt's HEADERS, cleared by leaving it
	cur := cl.leaveAttemptLocked()
	// The backoff is not a wait for a stream, and the next attempt
	// replays the log: the frames held are not needed.
	a.pending = cl.pending
	cl.pending = nil
	notReached := e.notReached
	if cur == nil || resetUp(cur, e.upCode, &a.cs, e.fl) {
		notReached = true // the attempt's HEADERS never left
	}
	if ev.kind == evPerTry {
		// Counted as an attempt, as the grpc engine counts a per-try
		// timeout that fired while its stream was being opened.
		notReached = false
	}
	e.notReached = notReached
	info := RetryInfo{
		Result: Result{Code: e.code, Err: e.err, NotReached: notReached,
			BytesIn: cl.bytesIn.Load(), BytesOut: cl.bytesOut.Load(), Attempt: cl.attemptID()},
		PerTry:   ev.kind == evPerTry,
		Took:     time.Since(rs.start),
		Deadline: cl.deadline,
	}
	// Under cl.mu: Retry is then never concurrent with Done (Done is
	// called once the call is done) nor with itself.
	next, wait, ok := cl.target.Retry(info)
	if !ok {
		// The attempt's outcome is the call's: its HEADERS, if it sent
		// any, go out before its status (answerClient).
		rs.heldHdr = held
		cl.endLocked(e, true, a)
		return
	}
	cl.setStateLocked(callBackoff)
	rs.last, rs.next = e, next
	rs.last.fl = nil // the calling reader's; the end may come on another goroutine
	epoch := cl.epoch
	rs.backoff = time.AfterFunc(max(wait, 0), func() { cl.post(event{kind: evBackoff, epoch: epoch}) })
}

// withFields returns a new header list: fields minus those named in extra,
// then extra (a retry's trace context and grpc-previous-rpc-attempts).
func withFields(fields, extra []hpack.HeaderField) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fields)+len(extra)+1)
	for _, f := range fields {
		if !replaced(f.Name, extra) {
			out = append(out, f)
		}
	}
	return append(out, extra...)
}

// backoffPassedLocked is the transition for evBackoff: the next attempt
// opens, its request frames the replay of the log (backoff → opening).
// If the request outgrew the log during the backoff, the failed attempt's
// outcome stands (backoff → done). Called with cl.mu held.
func (cl *call) backoffPassedLocked(a *after) {
	rs := cl.rs
	rs.backoff = nil
	if !rs.logging.Load() {
		e := rs.last
		rs.last = ending{}
		cl.endLocked(e, true, a)
		return
	}
	if !cl.deadline.IsZero() && !time.Now().Before(cl.deadline) {
		// Never start an attempt past the deadline; the deadline timer
		// ends the call.
		return
	}
	// Frames that arrived during the backoff are in the replay too.
	a.pending = cl.pending
	cl.pending = rs.replay(cl.sc.sh, cl.reqEnd)
	cl.addr, cl.upstream = rs.next.Addr, rs.next.Upstream
	cl.reqFields = withFields(cl.reqFields, rs.next.Header)
	rs.last, rs.next = ending{}, Target{}
	rs.start = time.Now()
	a.open, a.next = true, cl.openLocked()
}

// replay returns the request frames that replay the log: its DATA in
// chunks, then its END_STREAM or trailers. reqEnd: the request HEADERS
// ended the stream.
func (rs *retryState) replay(sh *shared, reqEnd bool) []op {
	ops := make([]op, 0, len(rs.log)/replayChunk+2)
	for p := rs.log; len(p) > 0; {
		n := min(len(p), replayChunk)
		ops = append(ops, sh.dataOp(p[:n], false, nil))
		p = p[n:]
	}
	if rs.end && rs.trailers == nil {
		if n := len(ops); n > 0 {
			ops[n-1].end = true
		} else if !reqEnd {
			ops = append(ops, op{kind: opData, end: true})
		}
	}
	if rs.trailers != nil {
		ops = append(ops, op{kind: opHeaders, end: true, fields: rs.trailers})
	}
	return ops
}

// reroutable reports whether a request frame that the call's upstream
// stream refused may still be needed: the call may be rerouted
// (rerouteLocked).
func (cl *call) reroutable() bool {
	return cl.target.Reroute != nil && cl.rs == nil
}

// rerouteLocked is the transition that hands a call whose current attempt
// never reached its backend (ev.reroutable) to Target.Reroute and, if
// that names another, opens a new attempt there (opening or linked →
// opening). No replay is needed: such a call forwarded nothing but its
// HEADERS, so everything else it received is still in cl.pending (frames
// that the refused stream no longer took go there too: holdUp). It reports
// false, leaving the call to end, when the request's DATA already went to
// the refused stream, the deadline has passed or Reroute declines.
// Called with cl.mu held, for calls that are not retryable (Retry handles
// those, with its log).
func (cl *call) rerouteLocked(ev *event, a *after) bool {
	if !cl.deadline.IsZero() && !time.Now().Before(cl.deadline) {
		return false
	}
	e := &ev.end
	if cur := cl.up.Load(); cur != nil {
		uc := cur.c
		uc.mu.Lock()
		sent := cl.upData
		uc.mu.Unlock()
		if sent {
			// Request DATA went to the refused stream and, once written,
			// its credit to the client: it is gone.
			return false
		}
	}
	// Under cl.mu, as Retry: never concurrent with Done (called once the
	// call is done) nor with itself.
	next, ok := cl.target.Reroute.Reroute(Result{Code: e.code, Err: e.err, NotReached: true,
		BytesIn: cl.bytesIn.Load(), BytesOut: cl.bytesOut.Load()})
	if !ok {
		return false
	}
	a.reset = cl.leaveAttemptLocked()
	cl.addr, cl.upstream = next.Addr, next.Upstream
	if len(next.Header) > 0 {
		cl.reqFields = withFields(cl.reqFields, next.Header)
	}
	a.open, a.next = true, cl.openLocked()
	return true
}
