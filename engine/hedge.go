package engine

import (
	"errors"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// This file holds hedging (Target.Hedge): more than one attempt of a call
// in flight at once, the first to answer carrying the call.
//
// A hedged call is a retryable one (Target.Retry, a replay log) that may
// have, beside its current attempt (cl.epoch, cl.up: the one lifecycle.go
// describes), sibling attempts (hedgeState.sibs), each with its own epoch
// and upstream stream. Siblings are started by the hedge timer: when it
// fires (Delay after the call's start, then Delay after each hedged
// attempt) while the current attempt has no response yet (opening or
// linked), the whole request has arrived and is still in the replay log,
// and fewer than MaxAttempts attempts are in flight, Hedger.Hedge is asked
// for another attempt; its request frames are the replayed log. A call
// whose request is still arriving is not hedged until it has (a
// client-streaming call's siblings start once the client half-closed);
// one whose request outgrew the log is never hedged.
//
// What attempts do to each other (all under call.mu, by the transitions):
//   - The first attempt to answer with response HEADERS while the current
//     one has none becomes the current attempt (promoteLocked); the one it
//     replaces keeps running as a sibling. From there on the current
//     attempt's HEADERS are held as for any retryable call, and the first
//     attempt whose response commits the call wins: every sibling is reset
//     with CANCEL (commitLocked, cancelSiblingsLocked).
//   - A sibling that answers with HEADERS while the current attempt's are
//     held is cancelled: the client sees one attempt's headers only.
//   - An attempt that fails with a fatal status (Hedger.Fatal: not one
//     the route retries) ends the call with that status, and every other
//     attempt is cancelled (gRFC A6).
//   - An attempt that fails otherwise (a retryable status, a reset, a
//     refused stream, a failed dial) leaves the others carrying on; when
//     it was the current one, a sibling takes its place (carryOnLocked).
//     Only when no attempt is left does the failure go to Target.Retry,
//     the normal retry rules.
//
// Events of siblings reach the call as any other (post): currentLocked
// finds them stale, and siblingLocked then looks for the sibling they
// concern. Calls without Target.Hedge have no hedge state (cl.hg nil) and
// pay a nil check on that stale path only.

// Hedge asks for hedged attempts (Target.Hedge). It needs a retryable
// Target (Retry and RetryBufferBytes): the attempts' request is the replay
// log.
type Hedge struct {
	// Delay is how long an attempt may go without response HEADERS
	// before another starts. Must be positive.
	Delay time.Duration
	// MaxAttempts bounds the attempts in flight at once, the first
	// included (at least 2).
	MaxAttempts int
	// Hedger names the hedged attempts and reports their ends.
	Hedger Hedger
}

// Hedger is the Director's side of a hedged call. Its methods run under
// call.mu, like Target.Retry, must not block or call into the engine, and
// are never called concurrently with each other, with Retry, Reroute or
// Done, nor after Done. Attempts are named by id: 0 for the call's first
// attempt, the id Hedge returned for the others; Result.Attempt names the
// attempt a Result of Retry, Reroute or Done concerns (a retry or a reroute
// of an attempt keeps its id).
type Hedger interface {
	// Hedge asks for another attempt in flight. ok true: it goes to
	// next.Addr through next.Upstream with next.Header added to the
	// request HEADERS, named id (> 0). ok false: the call is hedged no
	// more.
	Hedge() (next Target, id int, ok bool)
	// Fatal reports whether failed, one attempt's outcome, ends the call
	// at once with every other attempt cancelled (gRFC A6's non-retryable
	// status), rather than leaving the attempts still in flight to carry
	// the call.
	Fatal(failed Result) bool
	// Ended reports the end of attempt id, which is not the call's: it
	// failed while others carried on, or lost (Result.Code CANCELLED,
	// Result.Err ErrHedgeLost).
	Ended(id int, r Result)
}

// ErrHedgeLost is the Result.Err of a hedged attempt cancelled because
// another one carried the call (it won, or failed fatally).
var ErrHedgeLost = errors.New("engine: hedged attempt cancelled: another attempt carried the call")

// hedgeState is a hedged call's attempts beside its current one. Guarded
// by call.mu.
type hedgeState struct {
	h     Hedger
	delay time.Duration
	max   int
	t     *time.Timer // posts evHedge; nil when not armed
	off   bool        // Hedger declined: no more hedged attempts
	last  uint32      // the last epoch given out (nextEpochLocked)
	hid   int         // the current attempt's id
	sibs  []sibling
}

// sibling is an attempt in flight that is not the call's current one.
type sibling struct {
	epoch    uint32
	id       int
	up       *hstream // nil while it waits for a stream
	addr     string
	upstream *Upstream
	fields   []hpack.HeaderField // its request HEADERS (cl.reqFields when current)
	pending  []op                // its request frames not yet on a stream
}

// newHedge sets the hedge state up. Client reader, before the call is
// shared; only for retryable calls.
func (cl *call) newHedge() {
	h := cl.target.Hedge
	if h == nil || h.Hedger == nil || cl.rs == nil || h.Delay <= 0 || h.MaxAttempts < 2 {
		return
	}
	cl.hg = &hedgeState{h: h.Hedger, delay: h.Delay, max: h.MaxAttempts, last: 1}
}

// nextEpochLocked is the epoch of a new attempt: one more than the last,
// siblings' included.
func (cl *call) nextEpochLocked() uint32 {
	if hg := cl.hg; hg != nil {
		hg.last++
		return hg.last
	}
	return cl.epoch + 1
}

// armHedgeLocked starts the hedge timer unless it runs, hedging is over
// or the call has committed.
func (cl *call) armHedgeLocked() {
	hg := cl.hg
	if hg == nil || hg.t != nil || hg.off {
		return
	}
	if s := cl.stateLocked(); s == callCommitted || s == callDone {
		return
	}
	hg.t = time.AfterFunc(hg.delay, func() { cl.post(event{kind: evHedge}) })
}

// stopLocked stops the hedge timer for good.
func (hg *hedgeState) stopLocked() {
	hg.off = true
	if hg.t != nil {
		hg.t.Stop()
		hg.t = nil
	}
}

// hedgeLocked is the transition for evHedge: another attempt starts if the
// current one has no response yet and the rules above allow it.
func (cl *call) hedgeLocked(a *after) {
	hg, rs := cl.hg, cl.rs
	hg.t = nil
	if s := cl.stateLocked(); s != callOpening && s != callLinked {
		return // held or backoff: openLocked or carryOnLocked re-arm it
	}
	if !rs.logging.Load() {
		hg.stopLocked() // the request outgrew the log: no replay
		return
	}
	if !rs.end || 1+len(hg.sibs) >= hg.max {
		// The request is still arriving, or enough attempts are in
		// flight: look again after another delay.
		cl.armHedgeLocked()
		return
	}
	if !cl.deadline.IsZero() && !time.Now().Before(cl.deadline) {
		return
	}
	next, id, ok := hg.h.Hedge()
	if !ok {
		hg.stopLocked()
		return
	}
	sib := sibling{epoch: cl.nextEpochLocked(), id: id, addr: next.Addr, upstream: next.Upstream,
		fields: withFields(cl.reqFields, next.Header), pending: rs.replay(cl.sc.sh, cl.reqEnd)}
	hg.sibs = append(hg.sibs, sib)
	cl.sc.sh.stats.HedgedAttempts.Add(1)
	a.hedge, a.hedgeAt = true, attempt{epoch: sib.epoch, addr: sib.addr, up: sib.upstream}
	cl.armHedgeLocked()
}

// indexLocked finds the sibling with upstream stream up, or with
// epoch when up is nil; -1 if none.
func (hg *hedgeState) indexLocked(epoch uint32, up *hstream) int {
	for i := range hg.sibs {
		if up != nil && hg.sibs[i].up == up || up == nil && hg.sibs[i].epoch == epoch {
			return i
		}
	}
	return -1
}

// removeLocked takes sibling i out of the call.
func (hg *hedgeState) removeLocked(i int) sibling {
	s := hg.sibs[i]
	hg.sibs = append(hg.sibs[:i], hg.sibs[i+1:]...)
	return s
}

// siblingLocked is the transition for an event that is stale for the
// current attempt but may concern a sibling: its stream ended, or it got
// no stream. It reports false when it concerns none (the event is
// stale). Called with cl.mu held.
func (cl *call) siblingLocked(ev *event, a *after) bool {
	hg := cl.hg
	s := cl.stateLocked()
	if s == callDone || s == callCommitted {
		return false
	}
	var i int
	switch ev.kind {
	case evStream:
		i = hg.indexLocked(0, ev.up)
	case evOpenFailed, evOpenRefused:
		i = hg.indexLocked(ev.epoch, nil)
		if i >= 0 && hg.sibs[i].up != nil {
			i = -1
		}
	default:
		return false
	}
	if i < 0 {
		return false
	}
	e := &ev.end
	r := Result{Code: e.code, Err: e.err, NotReached: e.notReached, Attempt: hg.sibs[i].id}
	if ev.kind == evStream && !e.notReached && hg.h.Fatal(r) {
		// gRFC A6: a fatal status from any attempt ends the call with it.
		cl.promoteLocked(i)
		if rs := cl.rs; rs != nil && rs.heldHdr != nil {
			// The attempt whose HEADERS were held lost: the client sees
			// the fatal attempt's answer alone.
			rs.heldHdr = nil
			if rs.hold != nil {
				rs.hold.Stop()
				rs.hold = nil
			}
		}
		cl.endLocked(ev.end, true, a)
		return true
	}
	sib := hg.removeLocked(i)
	if sib.up != nil {
		if resetUp(sib.up, e.upCode, &a.cs, nil) {
			r.NotReached = true
		}
	}
	a.pending = append(a.pending, sib.pending...)
	hg.h.Ended(sib.id, r)
	cl.armHedgeLocked()
	return true
}

// siblingHeadersLocked handles response HEADERS (not trailers-only) on
// up, which is not the current attempt's stream: a sibling's first answer.
// If the current attempt has none yet, the sibling becomes the current
// one (true: the caller holds its HEADERS as the current attempt's);
// otherwise the sibling is cancelled (false: the frame is dropped).
// Called with cl.mu held.
func (cl *call) siblingHeadersLocked(up *hstream, cs *[]credit) bool {
	hg := cl.hg
	i := hg.indexLocked(0, up)
	if i < 0 {
		return false
	}
	if s := cl.stateLocked(); s == callOpening || s == callLinked {
		cl.promoteLocked(i)
		return true
	}
	sib := hg.removeLocked(i)
	resetUp(sib.up, http2.ErrCodeCancel, cs, nil)
	hg.h.Ended(sib.id, Result{Code: codes.Canceled, Err: ErrHedgeLost})
	return false
}

// promoteLocked makes sibling i the call's current attempt; the current
// one takes its place among the siblings, still in flight. Called with
// cl.mu held, while the call has not committed. cl.upData is left alone
// here and in carryOnLocked: it matters to reroutes only, which a hedged
// (retryable) call never takes, and it is guarded by its stream's
// connection mutex, not cl.mu.
func (cl *call) promoteLocked(i int) {
	hg := cl.hg
	sib := hg.sibs[i]
	if rs := cl.rs; rs != nil && rs.perTry != nil {
		rs.perTry.Stop() // armed for the attempt that stops being current
		rs.perTry = nil
	}
	hg.sibs[i] = sibling{epoch: cl.epoch, id: hg.hid, up: cl.up.Load(), addr: cl.addr,
		upstream: cl.upstream, fields: cl.reqFields, pending: cl.pending}
	cl.releasePendingLocked() // the old attempt waits on, uncounted
	cl.epoch, hg.hid = sib.epoch, sib.id
	cl.addr, cl.upstream, cl.reqFields, cl.pending = sib.addr, sib.upstream, sib.fields, sib.pending
	cl.up.Store(sib.up)
	switch s := cl.stateLocked(); {
	case sib.up != nil && s == callOpening:
		cl.setStateLocked(callLinked)
	case sib.up == nil && (s == callLinked || s == callHeld):
		cl.setStateLocked(callOpening)
	}
}

// carryOnLocked handles the failure ev of the current attempt of a hedged
// call that has siblings in flight: a fatal status ends the call;
// otherwise the call leaves the attempt and a sibling becomes current
// (linked, or opening if it still waits for a stream). Called with cl.mu
// held; it always handles ev (true).
func (cl *call) carryOnLocked(ev *event, a *after) bool {
	hg := cl.hg
	e := &ev.end
	r := Result{Code: e.code, Err: e.err, NotReached: e.notReached, Attempt: hg.hid}
	if ev.kind == evStream && !e.notReached && hg.h.Fatal(r) {
		// gRFC A6: the call ends with it, the siblings cancelled
		// (endLocked), whatever Retry would say.
		cl.endLocked(ev.end, false, a)
		return true
	}
	id := hg.hid
	if cur := cl.leaveAttemptLocked(); cur != nil && resetUp(cur, e.upCode, &a.cs, e.fl) {
		r.NotReached = true
	}
	a.pending = append(a.pending, cl.pending...)
	cl.pending = nil
	hg.h.Ended(id, r)
	// Prefer a sibling with a stream.
	i := 0
	for j := range hg.sibs {
		if hg.sibs[j].up != nil {
			i = j
			break
		}
	}
	sib := hg.removeLocked(i)
	cl.epoch, hg.hid = sib.epoch, sib.id
	cl.addr, cl.upstream, cl.reqFields, cl.pending = sib.addr, sib.upstream, sib.fields, sib.pending
	cl.up.Store(sib.up)
	s := cl.stateLocked()
	switch {
	case sib.up != nil && s != callLinked:
		cl.setStateLocked(callLinked)
	case sib.up == nil && s != callOpening:
		cl.setStateLocked(callOpening)
	}
	cl.armHedgeLocked()
	return true
}

// cancelSiblingsLocked resets every sibling with CANCEL (the call
// committed or ended) and stops hedging. Called with cl.mu held.
func (cl *call) cancelSiblingsLocked(cs *[]credit, drop *[]op) {
	hg := cl.hg
	hg.stopLocked()
	for _, sib := range hg.sibs {
		r := Result{Code: codes.Canceled, Err: ErrHedgeLost}
		if sib.up != nil && resetUp(sib.up, http2.ErrCodeCancel, cs, nil) {
			r.NotReached = true
		} else if sib.up == nil {
			r.NotReached = true
		}
		*drop = append(*drop, sib.pending...)
		hg.h.Ended(sib.id, r)
	}
	hg.sibs = nil
}

// openingLocked reports the sibling that attempt epoch is, if it
// still waits for a stream.
func (hg *hedgeState) openingLocked(epoch uint32) *sibling {
	if i := hg.indexLocked(epoch, nil); i >= 0 && hg.sibs[i].up == nil {
		return &hg.sibs[i]
	}
	return nil
}
