package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file owns calls: a call's life (callState), the one function that
// changes it (setStateLocked) and the events that make it change.
//
// A call's life
//
//	starting ──▶ opening ──▶ linked ─────────────▶ committed
//	              │ ▲ ▲       │ │                     ▲     │
//	        retry │ │ └───────┤ └──▶ held ────────────┘     │
//	              ▼ │ reroute │       │                     │
//	             backoff ◀────┴───────┘ retry               ▼
//	                                    done ◀── every state but done
//
//	(and opening ──▶ opening: a reroute of a stream that could not be opened;
//	 starting ──▶ delayed ──▶ opening | done: an injected delay;
//	 held ──▶ linked | opening: a hedged call's held attempt failed and a
//	 sibling attempt, linked or still opening, carries the call on)
//
//   - starting: the client reader checks the request HEADERS and asks the
//     Director; nothing else knows the call yet.
//   - delayed: Target.FaultDelay holds the call back before its first
//     attempt (fault injection); the delay timer posts evDelay, which
//     opens it. The deadline runs meanwhile; request frames are held.
//   - opening: the current attempt (cl.epoch) waits for an upstream stream:
//     Pool.open picks a connection, or the call waits in a backend's
//     waiters for a dial or for stream capacity. A reroute (Target.Reroute)
//     of a stream that could not be opened opens another attempt: opening
//     again, with a new epoch.
//   - linked: the attempt's upstream stream (cl.up) is open; nothing of its
//     response was forwarded, so a retryable call may still be retried
//     (backoff) and a refused stream rerouted (opening).
//   - held: a retryable call's attempt answered with response HEADERS
//     (not trailers-only); meshd holds them (retryState.heldHdr) instead of
//     forwarding them, so that a status the backend sends right after, with
//     no message, can still be retried (many servers send header metadata
//     first). The attempt's next frame decides: a message commits the call
//     (the held HEADERS go out first), trailers or a reset end the attempt
//     as in linked (Retry decides; the held HEADERS of an attempt left are
//     dropped, so the client sees only the winning attempt's). The hold
//     timer bounds the wait (the per-try timeout's remainder, else
//     HeaderHoldLimit): it posts evHold, which forwards the HEADERS and
//     commits the call. Calls that are not retryable never hold.
//   - backoff: the attempt failed and Target.Retry asked for another, which
//     the backoff timer opens.
//   - a hedged call (hedge.go) has sibling attempts beside the current
//     one, each with its own epoch and stream; the state is the current
//     attempt's. A sibling that answers first becomes the current attempt
//     (opening ⇄ linked as its stream is or is not open yet), and the
//     commit cancels the siblings left.
//   - committed: the response started (the current attempt's first
//     response frame was forwarded; for a retryable call, its first message
//     or the end of the hold): the call is never retried or rerouted
//     again.
//   - done: the call ended: the client's answer is decided, and Target.Done
//     is called once, by the goroutine that made the call done. Every event
//     that arrives later is stale.
//
// One owner
//
// A call's state (state, epoch, cl.up's attempt, pending, the timers and
// the retry state, held HEADERS included) is changed only under call.mu, by the transition
// functions below, and its state only by setStateLocked, which panics on a
// transition the diagram does not have. The goroutines that act on a call
// do not change it themselves: they post an event (post) naming what
// happened and, when it concerns one attempt, which (its epoch, or its
// upstream stream). post takes call.mu once, asks currentLocked, the one
// staleness check, whether the event still concerns the call, runs the
// transition (stepLocked), and then, without call.mu, carries out what the
// transition left to do (after): answer the client, reset an upstream
// stream, open the next attempt, call Target.Done. Timers only post: the
// per-try, hold and backoff timers post the epoch they were armed for, the
// deadline, idle and hedge timers an event for the call as a whole; none takes
// a lock or checks anything itself.
//
// Lock order
//
//	Pool.mu → call.mu → conn.mu
//
// conn.mu is a client or backend connection's; no goroutine holds two
// connections' at once (conn.go), nor two Pools' mu (a call's attempt is
// on one Pool, the Server's own or its Upstream's). Pool.mu is held while a call is linked
// (link) or counted as waiting (holdPending); call.mu while the
// transition resets an attempt's upstream stream or reads what was queued
// on it. Target.Retry, Target.Reroute and the PendingLimiter and
// BufferLimiter run under call.mu and must not call into the engine;
// Target.Done runs with no lock held. Nothing that holds call.mu takes
// Pool.mu: Pool.open runs after post has released it.
//
// Goroutines that may end a call (post an event that makes it done)
//
//   - the client connection's reader: a malformed request, the Director's
//     error, the client's RST_STREAM, a flow-control or protocol error on
//     the client stream, an oversized request message, and the
//     connection's end (serverConn.endRead);
//   - a backend connection's reader: the response's end (trailers, DATA
//     with END_STREAM), RST_STREAM (a CANCEL at the deadline as the
//     deadline), GOAWAY, a protocol or flow-control error, an oversized
//     response message, and the connection's loss (Pool.runReader);
//   - a goroutine that opens an attempt (the client reader for the first,
//     or the fault delay timer's when it was delayed, a backoff timer's or
//     the reader whose event rerouted the call for later ones), when
//     Pool.open cannot give it a stream at once;
//   - a Pool dial goroutine, when the dial the call waits for fails;
//   - the goroutine that closes the call's Pool (Server.Close for the
//     Server's own, Pool.Close or Pool.Shutdown for one from NewPool), for
//     waiting calls and, through its connections' readers, linked ones;
//   - the call's timers: the deadline and idle timers, the per-try timer
//     (when Retry declines another attempt) and the backoff timer (when
//     the request outgrew the replay log meanwhile).
//
// Connection timers (keepalive, max age, connection idle) never end a
// call: they close or drain a connection, whose reader then ends its
// calls.

// callState is where a call is in its life (the diagram above).
type callState uint32

const (
	callStarting callState = iota
	callOpening
	callLinked
	callBackoff
	callCommitted
	callDone
	callHeld
	callDelayed
	numCallStates
)

var callStateNames = [numCallStates]string{"starting", "opening", "linked", "backoff", "committed", "done", "held", "delayed"}

func (s callState) String() string {
	if s < numCallStates {
		return callStateNames[s]
	}
	return fmt.Sprintf("callState(%d)", uint32(s))
}

// callTransitions lists, for each state, the states it may become: the
// arrows of the diagram above.
var callTransitions = [numCallStates][]callState{
	callStarting:  {callOpening, callDelayed, callDone},
	callDelayed:   {callOpening, callDone},
	callOpening:   {callLinked, callOpening, callBackoff, callDone},
	callLinked:    {callCommitted, callHeld, callOpening, callBackoff, callDone},
	callHeld:      {callCommitted, callBackoff, callDone, callLinked, callOpening},
	callBackoff:   {callOpening, callDone},
	callCommitted: {callDone},
	callDone:      nil,
}

// canBecome reports whether the diagram has an arrow from s to next.
func (s callState) canBecome(next callState) bool {
	if s >= numCallStates {
		return false
	}
	for _, t := range callTransitions[s] {
		if t == next {
			return true
		}
	}
	return false
}

// call is one proxied stream: the client-side hstream (down) and, once
// linked, the backend-side hstream (up) of its current attempt.
type call struct {
	sc   *serverConn
	down *hstream

	// Set on the client reader before the call is shared (start),
	// read-only after: the Director's Target (its callbacks and
	// resilience settings; a retry's or reroute's Target changes only
	// where the next attempt goes: addr, upstream, reqFields), the
	// effective deadline, whether the request HEADERS ended the stream,
	// and whether Target.Timeout, not the client, set the deadline (and
	// Target.TimeoutErr names it).
	target       Target
	deadline     time.Time
	reqEnd       bool
	timeoutOwned bool
	// rs is the retry state of a retryable call, idle its idle timer; nil
	// unless the Target asks for them (retry.go). Set before the call is
	// shared.
	rs   *retryState
	idle *idleTimer
	// shadow is the call's mirror copy (Target.Mirror), a call of its own
	// (mirror.go); mirror is set on that shadow. Both nil otherwise; set
	// before the call is shared.
	shadow *call
	mirror *mirrorState
	// hg is a hedged call's sibling attempts (hedge.go); nil unless the
	// Target asks for hedging. Set before the call is shared, guarded by
	// mu.
	hg *hedgeState

	// reqTrack is used only by the client connection's reader; respTrack
	// only by the backend connection's reader. Neither follows an opaque
	// call (a gRPC-Web request or preflight, Request.GRPCWeb): its body is
	// not gRPC messages (base64 in text mode), and the translator that
	// takes it checks it. Set before the call is shared.
	reqTrack, respTrack msgTracker
	opaque              bool

	// up is the current attempt's upstream stream: nil unless the call is
	// linked or committed (it is left as it was when the call is done).
	// Written under mu; read without it on the forwarding fast paths.
	up atomic.Pointer[hstream]
	// upData: a request frame after the HEADERS was queued on the stream
	// cl.up (it may have reached the backend, and its credit the client),
	// so a refused stream cannot be rerouted. Guarded by that stream's
	// connection mutex; reset when a stream is linked.
	upData bool

	// state is the call's callState: written only by setStateLocked (so
	// under mu), read without mu by admit's fast path.
	state atomic.Uint32

	mu sync.Mutex
	// epoch numbers the current attempt, from 1; it moves on when the
	// call leaves an attempt (a retry or a reroute), so that the events
	// of the attempt left are stale.
	epoch uint32
	// Where the current attempt goes: the Target's, a retry's or a
	// reroute's. reqFields is the request HEADERS for upstream,
	// grpc-timeout added at link time.
	addr      string
	upstream  *Upstream
	reqFields []hpack.HeaderField
	pending   []op // request frames received while no upstream stream takes them
	// pendHeld: the call holds a slot of Target.Pending (it waits in a
	// backend's waiters); releasePendingLocked frees it.
	pendHeld bool
	// dlIndex is the call's place in its Server's deadline queue, -1 when
	// it is not queued (deadlines.go); guarded by that queue's lock.
	dlIndex int
	delayT  *time.Timer // state delayed: posts evDelay

	bytesIn, bytesOut atomic.Int64
}

// stateLocked is the call's state. Called with cl.mu held.
func (cl *call) stateLocked() callState { return callState(cl.state.Load()) }

// setStateLocked is the one place a call's state changes. Called with
// cl.mu held. A transition the diagram does not have is a bug in the
// transition functions, found by the tests that drive them: it panics, as
// x/net/http2's stream state machine does on an invariant violation.
func (cl *call) setStateLocked(next callState) {
	if cur := cl.stateLocked(); !cur.canBecome(next) {
		panic(fmt.Sprintf("engine: invariant: call state %v cannot become %v", cur, next))
	}
	cl.state.Store(uint32(next))
	if next == callCommitted {
		// No attempt follows a committed one (no retry, hedge or
		// reroute): the request HEADERS it would have sent go, which for
		// a long-lived stream is a third of what the call holds.
		cl.reqFields = nil
	}
}

// eventKind says what happened to a call, and so which attempt it
// concerns.
type eventKind uint8

const (
	// evEnd ends the call whatever its attempt: the client (reset,
	// protocol error, gone), the deadline, meshd's checks.
	evEnd eventKind = iota
	// evStream: the upstream stream ev.up ended (trailers, reset,
	// refused, lost, protocol error): the end of the call, or of its
	// attempt while the call may be retried or rerouted.
	evStream
	// evOpenFailed: attempt ev.epoch got no upstream stream (the dial
	// failed, no capacity); a retry or a reroute may mend that.
	evOpenFailed
	// evOpenRefused: attempt ev.epoch got no upstream stream and no other
	// attempt would (meshd shutting down, Target.Pending's limit): the
	// call ends.
	evOpenRefused
	// evPerTry: attempt ev.epoch's per-try timeout passed.
	evPerTry
	// evBackoff: the backoff before attempt ev.epoch passed.
	evBackoff
	// evIdle: the idle timer fired; the call ends if it was idle long
	// enough.
	evIdle
	// evLink: a connection has room for attempt ev.epoch's stream (link).
	evLink
	// evCommit: a response frame arrived on ev.up (admit).
	evCommit
	// evHold: the hold of attempt ev.epoch's response HEADERS ran out
	// (state held): they are forwarded and the call commits.
	evHold
	// evDelay: Target.FaultDelay passed (state delayed): the first
	// attempt opens.
	evDelay
	// evHedge: the hedge timer fired (hedge.go): another attempt may
	// start.
	evHedge
)

// event is what a goroutine posts to a call (post).
type event struct {
	kind  eventKind
	epoch uint32   // evOpenFailed, evOpenRefused, evPerTry, evBackoff, evLink, evHold
	up    *hstream // evStream, evCommit
	end   ending   // how the call ends if the event ends it
}

// currentLocked is the one staleness check: it reports whether an event
// of kind k, for attempt epoch or upstream stream up (as the kind says),
// still concerns the call: its state, its current attempt. Called with
// cl.mu held.
func (cl *call) currentLocked(k eventKind, epoch uint32, up *hstream) bool {
	s := cl.stateLocked()
	switch k {
	case evEnd, evIdle:
		return s != callDone
	case evStream:
		return (s == callLinked || s == callHeld || s == callCommitted) && up == cl.up.Load()
	case evCommit:
		return (s == callLinked || s == callHeld) && up == cl.up.Load()
	case evHold:
		return s == callHeld && epoch == cl.epoch
	case evDelay:
		return s == callDelayed
	case evHedge:
		return s != callDone && s != callCommitted
	case evOpenFailed, evOpenRefused, evLink:
		return s == callOpening && epoch == cl.epoch
	case evPerTry:
		return (s == callOpening || s == callLinked) && epoch == cl.epoch
	case evBackoff:
		return s == callBackoff && epoch == cl.epoch
	}
	return false
}

// attempt is where an attempt goes, for Pool.open.
type attempt struct {
	epoch uint32
	addr  string
	up    *Upstream
}

// after is what a transition leaves to do once cl.mu is released: work
// that takes locks call.mu must not be held for (Pool.mu), or that calls
// out (Target.Done).
type after struct {
	stale bool // the event did not concern the call: release what it carries

	finish  bool                // the call is done: answer the client and report (finish)
	end     ending              // finish: how
	decided bool                // finish: end.notReached is a retry decision's, final
	held    []hpack.HeaderField // finish: response HEADERS held (state held), sent before the end
	up      *hstream            // finish: the upstream stream to reset
	done    func(Result)        // finish: Target.Done

	reset   *hstream // a rerouted attempt's stream, to cancel
	pending []op     // request frames no attempt will take
	cs      []credit // credit owed for what the transition dropped

	open bool    // open the next attempt
	next attempt // open: where

	hedge   bool    // open a hedged attempt (hedge.go)
	hedgeAt attempt // hedge: where
}

// post delivers ev to the call: the one way the goroutines listed at the
// top of this file act on a call. It never runs with cl.mu or Pool.mu
// held.
func (cl *call) post(ev event) {
	var a after
	cl.mu.Lock()
	cl.stepLocked(&ev, &a)
	cl.mu.Unlock()
	cl.apply(&ev, &a)
}

// stepLocked is the call's transition function for posted events: if ev
// is current (currentLocked), it runs the transition ev calls for and
// records in a what is left to do. Called with cl.mu held.
func (cl *call) stepLocked(ev *event, a *after) {
	if !cl.currentLocked(ev.kind, ev.epoch, ev.up) {
		if cl.hg == nil || !cl.siblingLocked(ev, a) {
			a.stale = true
		}
		return
	}
	switch ev.kind {
	case evEnd, evOpenRefused:
		cl.endLocked(ev.end, false, a)
	case evIdle:
		cl.idleLocked(a)
	case evBackoff:
		cl.backoffPassedLocked(a)
	case evDelay:
		cl.delayT = nil
		if rs := cl.rs; rs != nil {
			rs.start = time.Now() // the attempt's time, for Retry, starts now
		}
		a.open, a.next = true, cl.openLocked()
	case evHold:
		// Neither a message nor the attempt's end came in time: the
		// HEADERS go out, and the call is an ordinary one from here.
		cl.commitLocked(nil, &a.cs, &a.pending)
	case evHedge:
		cl.hedgeLocked(a)
	case evStream, evOpenFailed, evPerTry:
		cl.attemptEndedLocked(ev, a)
	default:
		panic(fmt.Sprintf("engine: invariant: event %d is not posted", ev.kind))
	}
}

// apply carries out what the transition for ev left to do (a), without
// cl.mu.
func (cl *call) apply(ev *event, a *after) {
	if a.stale {
		cl.dropStale(ev)
		return
	}
	sh := cl.sc.sh
	if a.reset != nil {
		// Normally already gone (refused); a reset otherwise.
		uc := a.reset.c
		uc.mu.Lock()
		uc.resetLocked(a.reset, http2.ErrCodeCancel, &a.cs, nil)
		uc.mu.Unlock()
	}
	for i := range a.pending {
		sh.dropOp(&a.pending[i], &a.cs)
	}
	if a.finish {
		cl.finish(a)
	} else {
		applyCredits(a.cs)
	}
	if a.open {
		cl.sc.srv.poolFor(a.next.up).open(cl, a.next, nil)
	}
	if a.hedge {
		cl.sc.srv.poolFor(a.hedgeAt.up).open(cl, a.hedgeAt, nil)
	}
}

// dropStale releases what a stale event carries: a backend's final frame,
// or the client stream of a call that ended before the client went away.
func (cl *call) dropStale(ev *event) {
	var cs []credit
	if cl.mirror != nil && ev.end.mode != endForward {
		return // a shadow has no client stream
	}
	switch ev.end.mode {
	case endForward:
		cl.sc.sh.dropOp(&ev.end.final, &cs)
	case endClientGone:
		sc := &cl.sc.conn
		st := cl.down
		sc.mu.Lock()
		if !st.removed {
			sc.discardLocked(st, &cs)
			st.finalQueued, st.sendDone, st.recvDone = true, true, true
			sc.removeStreamLocked(st)
		}
		sc.mu.Unlock()
	case endRST:
		if ev.kind == evEnd {
			// A stream error of the client's (only the client reader ends a
			// call with endRST) on a call meshd had already answered: the
			// client still gets the RST_STREAM code RFC 9113 names for
			// it, after or instead of that answer.
			sc := &cl.sc.conn
			sc.mu.Lock()
			sc.resetLocked(cl.down, ev.end.rst, &cs, ev.end.fl)
			sc.mu.Unlock()
		}
	}
	applyCredits(cs)
}

// start sets the call up with the Director's target and opens its first
// attempt (state starting → opening), or ends it at once. It runs on the
// client reader, the only goroutine that knows the call until then.
func (cl *call) start(target Target, req *reqHeaders, fl *flusher) {
	cl.target = target
	deadline := req.deadline
	if target.Timeout > 0 {
		if d := req.now.Add(target.Timeout); deadline.IsZero() || d.Before(deadline) {
			deadline = d
			cl.timeoutOwned = target.TimeoutErr != nil
		}
	}
	cl.deadline = deadline
	authority := req.authority
	if target.Authority != "" {
		authority = target.Authority
	}
	cl.opaque = req.opaque
	cl.reqFields = upstreamHeaders(req.method, req.path, authority, req.regular, target.Header, target.Edits)
	cl.reqEnd = req.end
	cl.addr, cl.upstream = target.Addr, target.Upstream
	if !deadline.IsZero() && deadline.Sub(req.now) <= 0 {
		cl.fail(codes.DeadlineExceeded, "meshd: deadline exceeded", ErrDeadline, true)
		return
	}
	if target.Addr == "" {
		cl.fail(codes.Unavailable, "meshd: director returned no backend address", errNoAddr, true)
		return
	}
	cl.newResilience()
	if target.Hedge != nil {
		cl.newHedge() // hedge.go
	}
	if target.Mirror != nil {
		cl.startShadow(req, fl) // mirror.go
	}
	cl.mu.Lock()
	cl.epoch = 1
	var first attempt
	delayed := target.FaultDelay > 0
	if delayed {
		// Nothing is opened (no pick is used, no stream taken) until
		// the delay passes; the deadline below covers it.
		cl.setStateLocked(callDelayed)
		cl.delayT = time.AfterFunc(target.FaultDelay, func() { cl.post(event{kind: evDelay}) })
	} else {
		first = cl.openLocked()
	}
	// The timers run from the call's start, as the grpc engine's did: the
	// first attempt's per-try timeout covers opening its stream, as every
	// later attempt's does, and the idle timeout a dial that never ends.
	if !deadline.IsZero() {
		cl.sc.sh.deadlines.add(cl)
	}
	if it := cl.idle; it != nil {
		it.t = time.AfterFunc(it.d, it.fire)
	}
	cl.mu.Unlock()
	if !delayed {
		cl.sc.srv.poolFor(first.up).open(cl, first, fl)
	}
}

// openLocked makes the current attempt (cl.epoch) wait for its upstream
// stream: the call is opening and the attempt's per-try timer runs. It
// returns where Pool.open, which the caller runs once cl.mu is released,
// is to look. Called with cl.mu held.
func (cl *call) openLocked() attempt {
	cl.setStateLocked(callOpening)
	cl.armPerTryLocked()
	if cl.hg != nil {
		cl.armHedgeLocked()
	}
	return attempt{epoch: cl.epoch, addr: cl.addr, up: cl.upstream}
}

// leaveAttemptLocked ends the current attempt for a retry or a reroute:
// its events are stale from here (the epoch moves on, cl.up is cleared),
// its per-try timer is stopped and its wait for a stream, if any, over. It
// returns the attempt's upstream stream, if it had one, for the caller to
// reset. Called with cl.mu held.
func (cl *call) leaveAttemptLocked() *hstream {
	cur := cl.up.Load()
	cl.up.Store(nil)
	cl.epoch = cl.nextEpochLocked()
	if rs := cl.rs; rs != nil {
		if rs.perTry != nil {
			rs.perTry.Stop()
			rs.perTry = nil
		}
		if rs.hold != nil {
			// The attempt's held HEADERS are never forwarded: the client
			// sees only the winning attempt's.
			rs.hold.Stop()
			rs.hold, rs.heldHdr = nil, nil
		}
	}
	cl.releasePendingLocked()
	return cur
}

// attemptEndedLocked handles the end of the current attempt (its stream
// ended, could not be opened, or its per-try timeout passed): a
// retryable call that has not committed asks Target.Retry; another call
// whose stream was refused or could not be opened asks Target.Reroute;
// otherwise, or if they decline, the call ends. Called with cl.mu held.
func (cl *call) attemptEndedLocked(ev *event, a *after) {
	if cl.stateLocked() != callCommitted {
		if rs := cl.rs; rs != nil {
			if rs.logging.Load() {
				if hg := cl.hg; hg != nil && len(hg.sibs) > 0 && cl.carryOnLocked(ev, a) {
					return // a sibling carries the call (hedge.go)
				}
				cl.retryLocked(ev, a)
				return
			}
		} else if cl.target.Reroute != nil && ev.reroutable() && cl.rerouteLocked(ev, a) {
			return
		}
	}
	cl.endLocked(ev.end, false, a)
}

// reroutable reports whether ev is a failure Target.Reroute may mend: the
// attempt's stream could not be opened, or the backend refused it.
func (ev *event) reroutable() bool {
	switch ev.kind {
	case evOpenFailed:
		return true
	case evStream:
		return ev.end.notReached && ev.end.mode == endRST && ev.end.rst == http2.ErrCodeRefusedStream
	}
	return false
}

// endLocked makes the call done: it stops its timers, ends its wait for a
// stream, and leaves finish (a) to answer the client, reset the upstream
// stream, drop the request frames held and report e. decided: a retry
// decision made e.notReached final. Called with cl.mu held.
func (cl *call) endLocked(e ending, decided bool, a *after) {
	cl.setStateLocked(callDone)
	cl.releasePendingLocked()
	a.finish, a.end, a.decided = true, e, decided
	a.up = cl.up.Load()
	a.done = cl.target.Done
	if len(a.pending) == 0 {
		a.pending = cl.pending
	} else {
		a.pending = append(a.pending, cl.pending...)
	}
	cl.pending = nil
	if !cl.deadline.IsZero() {
		cl.sc.sh.deadlines.remove(cl)
	}
	if cl.delayT != nil {
		cl.delayT.Stop()
	}
	if rs := cl.rs; rs != nil {
		a.held, rs.heldHdr = rs.heldHdr, nil
		rs.stopLocked()
	}
	if it := cl.idle; it != nil {
		it.t.Stop()
	}
	if ms := cl.mirror; ms != nil && ms.grace != nil {
		ms.grace.Stop()
	}
	if cl.hg != nil {
		cl.cancelSiblingsLocked(&a.cs, &a.pending)
	}
}

// finish carries out the end of a call that endLocked made done: what the
// client sees, the reset of the upstream stream if it is still open, the
// counters and Target.Done. Runs without cl.mu, on the goroutine whose
// event ended the call.
func (cl *call) finish(a *after) {
	if cl.mirror != nil {
		cl.finishShadow(a) // mirror.go: no client
		return
	}
	e := &a.end
	committed := cl.answerClient(e, a.held, &a.cs)
	notReached := e.notReached
	if a.up == nil {
		// Never linked; or, after a retry decision, between attempts (the
		// failed attempt's stream is already reset).
		notReached = notReached || !a.decided
	} else if resetUp(a.up, e.upCode, &a.cs, e.fl) {
		notReached = true
	}
	applyCredits(a.cs)
	if s := cl.shadow; s != nil {
		// The copy may finish unless the request it copies never did.
		s.primaryEnded(e.mode != endClientGone && e.mode != endRST)
	}

	stats := &cl.sc.sh.stats
	switch e.code {
	case codes.DeadlineExceeded:
		if e.err != nil {
			stats.DeadlinesExceeded.Add(1)
		}
	case codes.ResourceExhausted:
		if errors.Is(e.err, ErrMessageTooLarge) {
			stats.MessagesTooLarge.Add(1)
		}
	}
	if a.done != nil {
		a.done(Result{
			Code:       e.code,
			Err:        e.err,
			NotReached: notReached,
			Attempt:    cl.attemptID(),
			Committed:  committed,
			BytesIn:    cl.bytesIn.Load(),
			BytesOut:   cl.bytesOut.Load(),
		})
	}
}

// answerClient ends the client stream as e says, after held, the response
// HEADERS of a call that ended while it held them (its backend's trailers
// that Retry declined to retry, the deadline), and reports whether any of
// the response was forwarded to the client (Result.Committed).
func (cl *call) answerClient(e *ending, held []hpack.HeaderField, cs *[]credit) (committed bool) {
	sc := &cl.sc.conn
	st := cl.down
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if held != nil && (e.mode == endForward || e.mode == endStatus) && !st.respStarted {
		// The backend sent them: exact forwarding, also on error.
		if sc.pushLocked(st, op{kind: opHeaders, fields: held}, e.fl) {
			st.respStarted = true
		}
	}
	switch e.mode {
	case endClientGone:
		sc.discardLocked(st, cs)
		st.finalQueued, st.sendDone, st.recvDone = true, true, true
		sc.removeStreamLocked(st)
	case endStatus:
		sc.discardDataLocked(st, cs)
		if st.respSent.inMessage() {
			// The client holds part of a response message (the writer has
			// it): trailers now would end the stream inside that message,
			// which a client reports as a malformed response (grpc-go:
			// INTERNAL "unexpected EOF"), not as meshd's status. A reset
			// is the one clean ending left; grpc-go clients report
			// CANCEL as DEADLINE_EXCEEDED once their own deadline has
			// passed, CANCELLED otherwise.
			if !sc.closed && !st.removed {
				sc.sh.stats.MidMessageResets.Add(1)
			}
			sc.resetLocked(st, http2.ErrCodeCancel, cs, e.fl)
		} else {
			fields := statusFields(e.st, !st.respStarted)
			if e.httpStatus != "" && !st.respStarted {
				fields[0].Value = e.httpStatus
			}
			sc.pushLocked(st, op{kind: opHeaders, fields: fields, end: true}, e.fl)
		}
	case endForward:
		if sc.pushLocked(st, e.final, e.fl) {
			st.respStarted = true
		} else {
			sc.sh.dropOp(&e.final, cs)
		}
	case endRST:
		sc.resetLocked(st, e.rst, cs, e.fl)
	}
	return st.respStarted
}

type linkResult uint8

const (
	linkOK      linkResult = iota
	linkRetry              // the connection cannot take the stream; try another
	linkAborted            // the call ended or left the attempt
)

// link opens attempt epoch's upstream stream on uc (opening → linked): it
// reserves a stream slot, queues the request HEADERS and the request
// frames received so far. Called with Pool.mu held.
func (cl *call) link(uc *upConn, epoch uint32, fl *flusher) linkResult {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var sib *sibling
	if !cl.currentLocked(evLink, epoch, nil) {
		// The call ended, or left the attempt (a connection dialled for
		// it came too late), unless the attempt is a hedged call's
		// sibling (hedge.go).
		if cl.hg == nil {
			return linkAborted
		}
		if s := cl.stateLocked(); s == callDone || s == callCommitted {
			return linkAborted
		}
		if sib = cl.hg.openingLocked(epoch); sib == nil {
			return linkAborted
		}
	}
	fields, pending := cl.reqFields, cl.pending
	if sib != nil {
		fields, pending = sib.fields, sib.pending
	}
	if !cl.deadline.IsZero() {
		rem := time.Until(cl.deadline)
		if rem <= 0 {
			// The deadline timer ends the call; never send a spent budget.
			return linkAborted
		}
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: string(appendTimeout(make([]byte, 0, 10), rem))})
	}
	st := &hstream{c: &uc.conn, call: cl, inWin: uc.ourInitWin}
	st.q = st.qbuf[:0]
	c := &uc.conn
	c.mu.Lock()
	if !uc.usableLocked() {
		c.mu.Unlock()
		return linkRetry
	}
	c.numStreams++
	uc.reserved++
	c.sh.stats.UpstreamStreams.Add(1)
	// Published before the HEADERS can leave, so the backend's answer is
	// never taken for another attempt's; the client reader, which
	// forwards to cl.up without cl.mu, queues its frames behind the ones
	// held so far, which are queued before c.mu is released.
	if sib == nil {
		cl.up.Store(st)
		cl.setStateLocked(callLinked)
	} else {
		sib.up = st
	}
	c.pushLocked(st, op{kind: opHeaders, fields: fields, end: cl.reqEnd}, fl)
	if sib == nil {
		cl.upData = len(pending) > 0
	}
	var rejected []op
	for i := range pending {
		if !c.pushLocked(st, pending[i], fl) {
			rejected = append(rejected, pending[i])
		}
		pending[i] = op{}
	}
	c.mu.Unlock()
	if sib != nil {
		sib.pending = nil
	} else {
		cl.pending = nil
		cl.releasePendingLocked() // the wait, if any, ends with a stream
	}
	if len(rejected) > 0 {
		var cs []credit
		for i := range rejected {
			c.sh.dropOp(&rejected[i], &cs)
		}
		applyCredits(cs)
	}
	return linkOK
}

// admit reports whether a response frame from up may be forwarded: only
// from the current attempt's stream, whose first response frame commits
// the call (linked or held → committed): a retryable call is never retried
// from then on, and its replay log is freed. fl is the calling reader's.
func (cl *call) admit(up *hstream, fl *flusher) bool {
	// Without cl.mu: once committed, a call only becomes done, and cl.up
	// no longer changes.
	if callState(cl.state.Load()) == callCommitted {
		return cl.up.Load() == up
	}
	cl.mu.Lock()
	if !cl.currentLocked(evCommit, 0, up) {
		// Committed meanwhile by another frame of up, or a frame of an
		// attempt the call left (or the call ended).
		ok := cl.stateLocked() == callCommitted && cl.up.Load() == up
		cl.mu.Unlock()
		return ok
	}
	if cl.hg == nil {
		cl.commitLocked(fl, nil, nil)
		cl.mu.Unlock()
		return true
	}
	var cs []credit
	var drop []op
	cl.commitLocked(fl, &cs, &drop)
	cl.mu.Unlock()
	for i := range drop {
		cl.sc.sh.dropOp(&drop[i], &cs)
	}
	applyCredits(cs)
	return true
}

// commitLocked commits the call (linked or held → committed): its current
// attempt's response goes to the client from here. HEADERS held are
// queued first, and the state changes after: admit's fast path, which
// forwards a frame without cl.mu once the call is committed, then cannot
// overtake them. Called with cl.mu held (the client connection's mu is
// taken under it, as the lock order allows). A hedged call's siblings
// lose: they are reset, cs collecting their credit and drop their request
// frames not yet sent, for the caller to release without cl.mu.
func (cl *call) commitLocked(fl *flusher, cs *[]credit, drop *[]op) {
	if cl.hg != nil {
		cl.cancelSiblingsLocked(cs, drop)
	}
	if rs := cl.rs; rs != nil {
		if rs.perTry != nil {
			rs.perTry.Stop() // it never cuts a response in progress
		}
		if rs.hold != nil {
			rs.hold.Stop()
			rs.hold = nil
		}
		if h := rs.heldHdr; h != nil {
			rs.heldHdr = nil
			c := &cl.sc.conn
			c.mu.Lock()
			if c.pushLocked(cl.down, op{kind: opHeaders, fields: h}, fl) {
				cl.down.respStarted = true
			}
			c.mu.Unlock()
		}
		rs.dropLogLocked()
	}
	cl.setStateLocked(callCommitted)
}

// attemptID is Result.Attempt of the call's current attempt.
func (cl *call) attemptID() int {
	if cl.hg == nil {
		return 0
	}
	return cl.hg.hid
}

// holdPending takes a slot of Target.Pending for attempt epoch, about to
// wait in a backend's waiters (called with Pool.mu held), unless the call
// holds one already or has left the attempt. false: the limit is reached;
// the attempt must be refused with refusePending.
func (cl *call) holdPending(epoch uint32) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.pendHeld || !cl.currentLocked(evLink, epoch, nil) {
		return true
	}
	if !cl.target.Pending.AcquirePending() {
		return false
	}
	cl.pendHeld = true
	return true
}

// releasePendingLocked ends the call's wait for an upstream stream, if it
// holds a slot of Target.Pending. Called with cl.mu held.
func (cl *call) releasePendingLocked() {
	if cl.pendHeld {
		cl.pendHeld = false
		cl.target.Pending.ReleasePending()
	}
}

// errPendingLimit is Result.Err of a call Target.Pending refused without
// a PendingErr.
var errPendingLimit = errors.New("engine: too many calls waiting for an upstream stream")

// refusePending ends a call whose attempt epoch Target.Pending did not
// admit into the wait: at once, with PendingErr's status, and for good (a
// reroute or a retry would wait too).
func (cl *call) refusePending(epoch uint32) {
	err := cl.target.PendingErr
	var st *status.Status
	if err == nil {
		err = errPendingLimit
		st = status.New(codes.ResourceExhausted, "meshd: too many calls waiting for an upstream stream")
	} else {
		st = status.Convert(err)
	}
	cl.post(event{kind: evOpenRefused, epoch: epoch,
		end: ending{mode: endStatus, st: st, code: st.Code(), err: err, notReached: true}})
}

// endCall posts an event that ends the call, whatever its attempt.
func (cl *call) endCall(e ending) { cl.post(event{kind: evEnd, end: e}) }

// streamEnded posts the end of the upstream stream up: the end of the
// call, or of its attempt while it may still be retried or rerouted.
func (cl *call) streamEnded(up *hstream, e ending) {
	cl.post(event{kind: evStream, up: up, end: e})
}

// fail ends the call with a meshd status; the backend, if any, is
// cancelled.
func (cl *call) fail(code codes.Code, msg string, err error, notReached bool) {
	cl.endCall(ending{mode: endStatus, st: status.New(code, msg), code: code, err: err, notReached: notReached})
}

// openFailed posts that attempt epoch got no upstream stream: an event
// that a retry or a reroute may mend (the dial failed, no capacity), or,
// when no other attempt would fare better, one that ends the call.
func (cl *call) openFailed(epoch uint32, code codes.Code, msg string, err error) {
	kind := evOpenRefused
	if retryableNotReached(code, err) {
		kind = evOpenFailed
	}
	cl.post(event{kind: kind, epoch: epoch,
		end: ending{mode: endStatus, st: status.New(code, msg), code: code, err: err, notReached: true}})
}

// onDeadline runs on the deadline timer's goroutine (and on a backend
// reader whose backend reset the stream for the same deadline).
func (cl *call) onDeadline() {
	if cl.timeoutOwned {
		st := status.Convert(cl.target.TimeoutErr)
		cl.endCall(ending{mode: endStatus, st: st, code: st.Code(), err: ErrDeadline})
		return
	}
	cl.fail(codes.DeadlineExceeded, "meshd: deadline exceeded", ErrDeadline, false)
}
