package engine

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// This file holds mirroring (Target.Mirror): a copy of a call's request,
// sent to another backend as it arrives, whose response is discarded.
//
// The copy is a call of its own, a shadow, with the same life as any
// other (lifecycle.go: opening, linked, done; its events and timers are
// its own, under its own mu), so that opening a stream on the mirror's
// Pool, linking it and ending it are the engine's one code path. What
// sets a shadow apart (call.mirror != nil):
//   - it has no client: its down stream is a detached placeholder, its
//     response frames are dropped as they arrive (their flow-control
//     credit returned to the mirror at once), and finishShadow replaces
//     answering a client with Mirror.Done;
//   - its request is fed by the primary call's client reader (mirrorData,
//     mirrorTrailers), with copies that carry no client credit: the client
//     is paced by the primary alone. The copies waiting for the mirror (not
//     yet linked, or beyond its flow-control window) are bounded by
//     Mirror.BufferBytes; past it the shadow is dropped (its stream reset),
//     so a slow or black-holed mirror costs bounded memory and nothing
//     else;
//   - it never retries or reroutes (no Retry, no Reroute), has no
//     deadline timer of its own (grpc-timeout carries the primary's
//     deadline), and outlives the primary by at most MirrorGrace.
// Nothing the shadow does reaches the primary: the primary only reads
// cl.shadow (set before the call is shared) to feed it and to tell it
// that the call ended.

// Mirror asks for a copy of the call's request to go to another backend
// (shadow traffic). Its response is discarded; nothing that happens to it
// delays, fails or retries the call.
type Mirror struct {
	// Addr is the mirror backend's host:port; Upstream how to reach it,
	// as Target.Addr and Target.Upstream.
	Addr     string
	Upstream *Upstream
	// Authority is the :authority sent to the mirror; "" the request's
	// with "-shadow" appended to its host (ShadowAuthority).
	Authority string
	// BufferBytes bounds the request bytes queued for the mirror and not
	// yet written to it; over it the copy is dropped. 0:
	// DefaultMirrorBufferBytes.
	BufferBytes int64
	// Done, if non-nil, is called once with the copy's outcome, on one of
	// meshd's goroutines; it must not block.
	Done func(MirrorResult)
}

// MirrorResult is what became of a request's copy.
type MirrorResult uint8

const (
	// MirrorAnswered: the mirror got the request and answered (whatever
	// its status).
	MirrorAnswered MirrorResult = iota
	// MirrorDropped: meshd gave the copy up: its buffer filled (the mirror
	// reads slower than the client sends), or the mirror had not answered
	// MirrorGrace after the call ended, or the call ended without its
	// request's end (the client cancelled).
	MirrorDropped
	// MirrorFailed: the mirror could not be reached (dial failed) or reset
	// the stream.
	MirrorFailed
)

func (r MirrorResult) String() string {
	switch r {
	case MirrorAnswered:
		return "answered"
	case MirrorDropped:
		return "dropped"
	}
	return "failed"
}

// DefaultMirrorBufferBytes is Mirror.BufferBytes's default.
const DefaultMirrorBufferBytes = 256 << 10

// MirrorGrace is how long a copy may outlive its call, for the mirror's
// answer; then it is dropped (reset).
const MirrorGrace = time.Second

var (
	errMirrorBuffer    = errors.New("engine: mirror buffer full")
	errMirrorAbandoned = errors.New("engine: mirror too slow")
)

// mirrorState is a shadow call's: its Mirror and its bookkeeping.
type mirrorState struct {
	m     *Mirror
	limit int64
	// off: the shadow takes no more request frames (done or dropped).
	// Read without mu on the primary's client reader.
	off atomic.Bool
	// Guarded by the shadow's mu.
	pendBytes int64       // request DATA in the shadow's pending frames
	grace     *time.Timer // after the primary ended: posts the shadow's end
}

// ShadowAuthority is the :authority a mirror gets: the request's with
// "-shadow" appended to its host ("users:8080" → "users-shadow:8080"), as
// Envoy and Istio name shadow traffic.
func ShadowAuthority(a string) string {
	if host, port, err := net.SplitHostPort(a); err == nil {
		return net.JoinHostPort(host+"-shadow", port)
	}
	return a + "-shadow"
}

// startShadow starts the shadow of cl, the call cl.target.Mirror asks
// for, and opens its stream. Client reader, from start, before cl is
// shared.
func (cl *call) startShadow(req *reqHeaders, fl *flusher) {
	m := cl.target.Mirror
	ms := &mirrorState{m: m, limit: m.BufferBytes}
	if ms.limit <= 0 {
		ms.limit = DefaultMirrorBufferBytes
	}
	auth := m.Authority
	if auth == "" {
		auth = ShadowAuthority(req.authority)
	}
	s := &call{sc: cl.sc, down: &hstream{removed: true}, mirror: ms, dlIndex: -1}
	s.target = Target{Addr: m.Addr, Upstream: m.Upstream}
	s.deadline = cl.deadline
	// The copy is the request as the primary sends it: the route's header
	// edits apply, its tracing fields (Target.Header) do not.
	s.reqFields = upstreamHeaders(req.method, req.path, auth, req.regular, nil, cl.target.Edits)
	s.reqEnd = req.end
	s.addr, s.upstream = m.Addr, m.Upstream
	s.mu.Lock()
	s.epoch = 1
	first := s.openLocked()
	s.mu.Unlock()
	cl.shadow = s
	cl.sc.srv.poolFor(m.Upstream).open(s, first, fl)
}

// mirrorData copies request DATA of the primary call to its shadow s.
// Primary's client reader goroutine.
func (s *call) mirrorData(p []byte, end bool) {
	if s.mirror.off.Load() || (len(p) == 0 && !end) {
		return
	}
	s.mirrorPush(p, end, nil)
}

// mirrorTrailers copies the primary's request trailers (fields, read-only)
// to its shadow s. Primary's client reader goroutine.
func (s *call) mirrorTrailers(fields []hpack.HeaderField) {
	if s.mirror.off.Load() {
		return
	}
	s.mirrorPush(nil, true, fields)
}

// mirrorPush queues a request frame for the shadow, DATA p (end: with
// END_STREAM) or, when trailers is non-nil, the request's trailers: held
// while its stream is not linked, else pushed to it; either way within
// the buffer limit, or the shadow is dropped. The copies carry no credit
// (src nil): the client is paced by the primary alone.
func (s *call) mirrorPush(p []byte, end bool, trailers []hpack.HeaderField) {
	ms := s.mirror
	n := int64(len(p))
	s.mu.Lock()
	if s.stateLocked() == callDone {
		ms.off.Store(true)
		s.mu.Unlock()
		return
	}
	up := s.up.Load()
	if up == nil {
		if ms.pendBytes+n > ms.limit {
			s.mu.Unlock()
			s.dropShadow()
			return
		}
		ms.pendBytes += n
		if trailers != nil {
			s.pending = append(s.pending, op{kind: opHeaders, end: true, fields: trailers})
		} else {
			var t *op
			if k := len(s.pending); k > 0 {
				t = &s.pending[k-1]
			}
			if o, packed := s.sc.sh.appendData(t, p, end, nil); !packed {
				s.pending = append(s.pending, o)
			}
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	// Linked: cl.up no longer changes (a shadow has one attempt), and the
	// frames held were queued on it by link, before this one.
	uc := up.c
	uc.mu.Lock()
	if queuedDataLocked(up)+n > ms.limit {
		uc.mu.Unlock()
		s.dropShadow()
		return
	}
	if trailers != nil {
		uc.pushLocked(up, op{kind: opHeaders, end: true, fields: trailers}, nil)
	} else {
		uc.pushDataLocked(up, p, end, nil, nil)
	}
	// false from either: the stream ended meanwhile, and its end ends the
	// shadow; a copy without credit needs no release.
	uc.mu.Unlock()
}

// queuedDataLocked is the request DATA queued on st and not yet written.
// Called with st's connection mu held.
func queuedDataLocked(st *hstream) int64 {
	var n int64
	for i := st.qh; i < len(st.q); i++ {
		n += int64(len(st.q[i].data))
	}
	return n
}

// dropShadow gives the shadow up: its buffer is full.
func (s *call) dropShadow() {
	s.mirror.off.Store(true)
	s.endCall(ending{mode: endStatus, code: codes.ResourceExhausted, err: errMirrorBuffer})
}

// primaryEnded tells the shadow s that its call ended: it may take
// MirrorGrace more for the mirror's answer, unless the request never
// ended (reqDone false: the client cancelled), which makes the copy
// worthless at once.
func (s *call) primaryEnded(reqDone bool) {
	abandon := func() { s.endCall(ending{mode: endStatus, code: codes.Canceled, err: errMirrorAbandoned}) }
	if !reqDone {
		abandon()
		return
	}
	s.mu.Lock()
	if s.stateLocked() != callDone {
		s.mirror.grace = time.AfterFunc(MirrorGrace, abandon)
	}
	s.mu.Unlock()
}

// finishShadow is finish for a shadow: no client to answer; the mirror's
// stream is reset if still open, and Mirror.Done told the outcome.
func (s *call) finishShadow(a *after) {
	ms := s.mirror
	ms.off.Store(true)
	e := &a.end
	if e.mode == endForward {
		s.sc.sh.dropOp(&e.final, &a.cs)
	}
	if a.up != nil {
		resetUp(a.up, e.upCode, &a.cs, nil)
	}
	applyCredits(a.cs)
	r := MirrorFailed
	switch {
	case errors.Is(e.err, errMirrorBuffer) || errors.Is(e.err, errMirrorAbandoned):
		r = MirrorDropped
	case e.mode == endForward:
		r = MirrorAnswered
	}
	if ms.m.Done != nil {
		ms.m.Done(r)
	}
}

// shadowRespData drops response DATA of a shadow, returning its credit to
// the mirror at once; its END_STREAM ends the shadow. Backend reader.
func (s *call) shadowRespData(up *hstream, data []byte, end bool) {
	if len(data) > 0 {
		up.c.credit(up, int64(len(data)))
	}
	if end {
		s.streamEnded(up, ending{mode: endForward, code: codes.Internal})
	}
}
