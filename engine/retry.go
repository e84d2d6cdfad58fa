package engine

import (
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
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
// when its response HEADERS or DATA are forwarded to the client, and from
// then on the call is an ordinary one. An attempt that ends before that
// (trailers-only answer, reset, refused, lost connection, per-try timeout)
// is handed to Target.Retry; if it says retry, the call leaves the stream
// (resets it; late frames from it are ignored), waits the backoff on a
// timer and links a new upstream stream, whose pending frames are the
// replayed log. The client stream is untouched meanwhile: request DATA
// keeps arriving, and goes to the log and to the call's pending frames.
//
// Which attempt is current is decided under call.mu: cl.up is the linked
// stream of the current attempt (nil between attempts), and every event of
// a retryable call from a stream that is not cl.up is dropped.

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

// replayChunk is the DATA payload size of replayed request frames.
const replayChunk = 16 << 10

// retryState is a retryable call's replay log and attempt bookkeeping.
// Fields are guarded by call.mu except the atomics.
type retryState struct {
	limit  int64
	shared BufferLimiter

	// logging: the log is kept (not committed, not over a limit).
	// Read without call.mu on the client reader's fast path.
	logging atomic.Bool
	// committed: the response started; no more retries.
	committed atomic.Bool

	log      []byte              // request DATA forwarded so far
	end      bool                // the client's END_STREAM is in the log
	trailers []hpack.HeaderField // request trailers, if the client sent any
	held     int64               // bytes of log taken from shared
	ok       bool                // the log holds the whole request so far
	seq      int                 // current attempt, from 1
	linkable bool                // the current attempt waits to be linked
	waiting  bool                // between attempts (backoff)
	start    time.Time           // the current attempt's start
	perTry   *time.Timer         // the current attempt's per-try timer
	backoff  *time.Timer         // the pending retry
	last     ending              // while waiting: the failure to report if no retry happens
	next     Target              // while waiting: where the next attempt goes
	perTryD  time.Duration       // Target.PerTryTimeout
	perTrySt *status.Status      // what a per-try timeout answers
}

// idleTimer ends a call after d without activity. Activity is one atomic
// store; the timer re-arms itself for the remaining time when it fires
// early, so no timer is reset per frame.
type idleTimer struct {
	cl    *call
	st    *status.Status // what the client gets
	d     time.Duration
	start time.Time
	last  atomic.Int64 // nanoseconds since start of the last activity
	t     *time.Timer  // guarded by cl.mu
}

func (it *idleTimer) touch() { it.last.Store(int64(time.Since(it.start))) }

// check runs on the timer's goroutine.
func (it *idleTimer) check() {
	cl := it.cl
	cl.mu.Lock()
	if cl.aborted {
		cl.mu.Unlock()
		return
	}
	idle := time.Since(it.start) - time.Duration(it.last.Load())
	if idle < it.d {
		it.t.Reset(it.d - idle)
		cl.mu.Unlock()
		return
	}
	cl.mu.Unlock()
	cl.end(ending{mode: endStatus, st: it.st, code: it.st.Code(), err: ErrIdleTimeout})
}

// upstreamLost is how a call whose backend connection closed under the
// stream up ends (unless a retry replaces it).
func upstreamLost(up *hstream) ending {
	return ending{mode: endStatus, st: status.New(codes.Unavailable, "meshd: upstream connection lost"),
		code: codes.Unavailable, err: ErrUpstreamLost, up: up}
}

// statusOf is err's status, DEADLINE_EXCEEDED with msg when err is nil.
func statusOf(err error, msg string) *status.Status {
	if err == nil {
		return status.New(codes.DeadlineExceeded, msg)
	}
	return status.Convert(err)
}

// startResilienceLocked applies the Target's idle timeout and retry
// settings; called once, with cl.mu held, before the first attempt opens.
func (cl *call) startResilienceLocked() {
	t := &cl.target
	if t.IdleTimeout > 0 {
		it := &idleTimer{cl: cl, st: statusOf(t.IdleErr, "meshd: idle timeout"), d: t.IdleTimeout, start: time.Now()}
		it.t = time.AfterFunc(it.d, it.check)
		cl.idle.Store(it)
	}
	if t.Retry == nil || t.RetryBufferBytes <= 0 {
		return
	}
	rs := &retryState{limit: t.RetryBufferBytes, shared: t.RetryBuffer, ok: true, seq: 1, linkable: true, start: time.Now(),
		perTryD: t.PerTryTimeout, perTrySt: statusOf(t.PerTryErr, "meshd: per-try timeout exceeded")}
	rs.logging.Store(true)
	// What the client sent before the first link is in cl.pending only.
	for i := range cl.pending {
		rs.logOpLocked(&cl.pending[i])
	}
	cl.rs.Store(rs)
	cl.armPerTryLocked(rs)
}

// armPerTryLocked starts the current attempt's per-try timer.
func (cl *call) armPerTryLocked(rs *retryState) {
	if rs.perTryD > 0 {
		seq, st := rs.seq, rs.perTrySt
		rs.perTry = time.AfterFunc(rs.perTryD, func() {
			cl.end(ending{mode: endStatus, st: st, code: st.Code(), err: ErrPerTryTimeout, attempt: true, perTrySeq: seq})
		})
	}
}

// logging reports whether request frames must go through the log.
func (cl *call) logging() bool {
	rs := cl.rs.Load()
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
	rs.ok = false
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
	if rs.backoff != nil {
		rs.backoff.Stop()
	}
	rs.dropLogLocked()
	rs.last = ending{}
}

// admit reports whether a response frame from up may be forwarded: always
// for a call that is not retryable; for a retryable one only from the
// current attempt, whose first response frame commits the call.
func (cl *call) admit(up *hstream) bool {
	rs := cl.rs.Load()
	if rs == nil {
		return true
	}
	if rs.committed.Load() {
		return cl.up.Load() == up
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.up.Load() != up || cl.aborted {
		return false
	}
	rs.committed.Store(true)
	if rs.perTry != nil {
		rs.perTry.Stop() // it never cuts a response in progress
	}
	rs.dropLogLocked()
	return true
}

// retryableNotReached reports whether a failure to open the upstream
// stream (cl.fail with notReached) is one a retry may replace: not the
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

// attemptFailed handles the end of an attempt of a retryable call. It
// reports true when end must do nothing: the event came from an attempt the
// call already left, or the call is being retried. false: the call ends
// with e.
func (cl *call) attemptFailed(e ending) bool {
	cl.mu.Lock()
	rs := cl.rs.Load()
	if cl.aborted || rs == nil {
		cl.mu.Unlock()
		return false
	}
	cur := cl.up.Load()
	var stale bool
	switch {
	case e.up != nil:
		stale = e.up != cur
	case e.perTrySeq != 0:
		stale = e.perTrySeq != rs.seq || rs.waiting || rs.committed.Load()
	default: // the upstream stream could not be opened
		stale = cur != nil || rs.waiting || !rs.linkable
	}
	if stale {
		cl.mu.Unlock()
		if e.mode == endForward {
			var cs []credit
			cl.sc.sh.dropOp(&e.final, &cs)
			applyCredits(cs)
		}
		return true
	}
	if rs.committed.Load() || !rs.ok {
		cl.mu.Unlock()
		return false
	}
	// Leave the attempt: from here its frames are dropped.
	if rs.perTry != nil {
		rs.perTry.Stop()
		rs.perTry = nil
	}
	rs.waiting, rs.linkable = true, false
	cl.up.Store(nil)
	// An attempt cut while waiting for its stream (per-try timeout) waits
	// no more; the backoff is not a wait for a stream.
	cl.releasePendingLocked()
	pending := cl.pending
	cl.pending = nil
	var cs []credit
	notReached := e.notReached
	if cur != nil {
		if resetUp(cur, e.upCode, &cs, e.fl) {
			notReached = true
		}
	} else if e.up == nil {
		notReached = true
	}
	if e.perTrySeq != 0 {
		// Counted as an attempt, as the grpc engine counts a per-try
		// timeout that fired while its stream was being opened.
		notReached = false
	}
	e.notReached, e.decided, e.up = notReached, true, nil
	info := RetryInfo{
		Result: Result{Code: e.code, Err: e.err, NotReached: notReached,
			BytesIn: cl.bytesIn.Load(), BytesOut: cl.bytesOut.Load()},
		PerTry:   e.perTrySeq != 0,
		Took:     time.Since(rs.start),
		Deadline: cl.deadline,
	}
	// Under cl.mu: Retry is then never concurrent with Done (end sets
	// aborted under cl.mu before calling Done) nor with itself.
	next, wait, ok := cl.target.Retry(info)
	if ok {
		rs.seq++
		rs.last, rs.next = e, next
		rs.last.fl = nil // the calling reader's; the end may come on another goroutine
		seq := rs.seq
		rs.backoff = time.AfterFunc(max(wait, 0), func() { cl.nextAttempt(seq) })
	} else {
		rs.waiting = false
	}
	cl.mu.Unlock()
	for i := range pending {
		cl.sc.sh.dropOp(&pending[i], &cs)
	}
	applyCredits(cs)
	if !ok {
		cl.end(e)
	}
	return true
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

// nextAttempt runs on the backoff timer's goroutine: it queues the replay
// of the request and opens the new upstream stream.
func (cl *call) nextAttempt(seq int) {
	sh := cl.sc.sh
	cl.mu.Lock()
	rs := cl.rs.Load()
	if cl.aborted || rs.seq != seq || !rs.waiting {
		cl.mu.Unlock()
		return
	}
	rs.backoff = nil
	if !rs.ok {
		// The request outgrew the log during the backoff: the failed
		// attempt's outcome stands.
		rs.waiting = false
		e := rs.last
		rs.last = ending{}
		cl.mu.Unlock()
		cl.end(e)
		return
	}
	if !cl.deadline.IsZero() && !time.Now().Before(cl.deadline) {
		// Never start an attempt past the deadline; the deadline timer
		// ends the call.
		cl.mu.Unlock()
		return
	}
	old := cl.pending
	replay := make([]op, 0, len(rs.log)/replayChunk+2)
	for p := rs.log; len(p) > 0; {
		n := min(len(p), replayChunk)
		o := sh.dataOp(p[:n], false, nil)
		replay = append(replay, o)
		p = p[n:]
	}
	if rs.end && rs.trailers == nil {
		if n := len(replay); n > 0 {
			replay[n-1].end = true
		} else if !cl.reqEnd {
			replay = append(replay, op{kind: opData, end: true})
		}
	}
	if rs.trailers != nil {
		replay = append(replay, op{kind: opHeaders, end: true, fields: rs.trailers})
	}
	cl.pending = replay
	// Only here, on the goroutine that opens the stream, does cl.target
	// change: Pool.open reads it without the lock.
	t := cl.target
	t.Addr, t.Header, t.Upstream = rs.next.Addr, rs.next.Header, rs.next.Upstream
	cl.target = t
	cl.reqFields = withFields(cl.reqFields, rs.next.Header)
	rs.waiting, rs.linkable = false, true
	rs.last, rs.next = ending{}, Target{}
	rs.start = time.Now()
	cl.armPerTryLocked(rs)
	cl.mu.Unlock()
	// Frames that arrived during the backoff are in the replay too.
	var cs []credit
	for i := range old {
		sh.dropOp(&old[i], &cs)
	}
	applyCredits(cs)
	cl.sc.srv.pool.open(cl, nil)
}

// reroutable reports whether a request frame that the call's upstream
// stream refused may still be needed: the call may be rerouted (reroute).
func (cl *call) reroutable() bool {
	return cl.target.Reroute != nil && cl.rs.Load() == nil
}

// reroute hands a call that did not reach its backend to Target.Reroute
// and, if that names another, opens a new upstream stream there. No replay
// is needed: such a call forwarded nothing but its HEADERS, so everything
// else it received is still in cl.pending (frames that the refused stream
// no longer took go there too: holdUp). It reports true when the call was
// rerouted, and end must do nothing.
//
// Only calls that are not retryable (Retry handles those, with its log),
// only failures to open the stream and refused streams, and only before
// the deadline.
func (cl *call) reroute(e ending) bool {
	if e.up == nil && !e.attempt || e.up != nil && (e.mode != endRST || e.rst != http2.ErrCodeRefusedStream) {
		return false
	}
	cl.mu.Lock()
	cur := cl.up.Load()
	if cl.aborted || cl.rs.Load() != nil || cur != e.up ||
		!cl.deadline.IsZero() && !time.Now().Before(cl.deadline) {
		cl.mu.Unlock()
		return false
	}
	if cur != nil {
		uc := cur.c
		uc.mu.Lock()
		sent := cl.upData
		uc.mu.Unlock()
		if sent {
			// Request DATA went to the refused stream and, once written,
			// its credit to the client: it is gone.
			cl.mu.Unlock()
			return false
		}
	}
	// Under cl.mu, as Retry: never concurrent with Done (end sets aborted
	// under cl.mu before calling it) nor with itself.
	next, ok := cl.target.Reroute.Reroute(Result{Code: e.code, Err: e.err, NotReached: true,
		BytesIn: cl.bytesIn.Load(), BytesOut: cl.bytesOut.Load()})
	if !ok {
		cl.mu.Unlock()
		return false
	}
	cl.up.Store(nil)
	// Pool.open, on this goroutine, reads these without the lock; link
	// reads them under it.
	cl.target.Addr, cl.target.Upstream = next.Addr, next.Upstream
	if len(next.Header) > 0 {
		cl.reqFields = withFields(cl.reqFields, next.Header)
	}
	cl.mu.Unlock()
	if cur != nil {
		// Normally already gone (refused); a reset otherwise.
		var cs []credit
		uc := cur.c
		uc.mu.Lock()
		uc.resetLocked(cur, http2.ErrCodeCancel, &cs, nil)
		uc.mu.Unlock()
		applyCredits(cs)
	}
	cl.sc.srv.pool.open(cl, nil)
	return true
}
