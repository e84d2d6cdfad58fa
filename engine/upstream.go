package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

// maxConnsPerBackend caps the connections to one backend address (normally
// ConnsPerBackend, more only while every one is at the backend's
// MAX_CONCURRENT_STREAMS).
const maxConnsPerBackend = 64

// maxStreamsPerConn is how many streams one connection may carry over its
// life: client stream ids are odd and below 2^31.
const maxStreamsPerConn = 1<<30 - 1

// Upstream says which Pool holds a stream's backend connections and how
// that Pool reaches backends when a plain TCP connection (h2c with prior
// knowledge) will not do: TLS with a cluster's CA, server name and client
// certificate, for example. A Target names it; a nil *Upstream means the
// Server's own Pool, through Config.Dial or plain TCP.
//
// Its identity is its pointer: a Pool keeps separate connections per
// (address, *Upstream), so targets with different Upstreams never share a
// connection, even to the same address, and a new *Upstream (a cluster
// rebuilt with other TLS settings) gets new connections. Use one value for
// all the streams that may share connections, e.g. one per cluster; the
// engine never modifies it.
type Upstream struct {
	// Name identifies the upstream in logs and dial errors (e.g. the
	// cluster's name). May be empty.
	Name string

	// Dial opens a connection to addr, as Config.Dial does; ctx carries
	// the Pool's DialTimeout. When it returns a *tls.Conn, the Pool
	// completes the handshake if Dial did not and requires ALPN "h2": a
	// backend that does not negotiate it fails the dial. nil: the Pool's
	// Dial, or plain TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	// Pool holds the connections streams through this Upstream use: a
	// Pool made with NewPool, owned by whoever owns the backends (meshd:
	// the cluster), so that every Server naming the Upstream shares its
	// connections and the owner alone decides when they go (Forget,
	// Close). nil: each Server's own Pool (Server.Pool).
	Pool *Pool
}

// backendKey is what the Pool keeps connections through an Upstream by.
type backendKey struct {
	addr string
	up   *Upstream
}

// Pool holds the HTTP/2 connections to backends, a few per backend address
// and Upstream (h2c with prior knowledge, or whatever the Upstream dials).
// Every Server has its own (Server.Pool); NewPool makes one that belongs
// to its caller and that any number of Servers may use, through the
// Upstreams that name it. All methods are safe for concurrent use.
type Pool struct {
	// sh is the Pool's own: its backend connections' settings, buffers and
	// counters, never a Server's (the calls on them are).
	sh     *shared
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial goroutines and connection goroutines

	// mu is taken before any call or connection mutex, never after (the
	// lock order, Pool.mu → call.mu → conn.mu, is in lifecycle.go).
	mu       sync.Mutex
	closed   bool
	backends map[string]*backend
	all      map[*upConn]struct{} // every open connection, forgotten backends' too
	changed  chan struct{}        // closed and replaced when a connection is removed

	// viaUpstream holds the backends reached through an Upstream, by
	// (address, Upstream); backends holds the h2c ones, by address, so
	// that the h2c path keeps its single lookup by string. Guarded by mu.
	viaUpstream map[backendKey]*backend
}

// backend is the set of connections to one address through one Upstream.
// Guarded by Pool.mu.
type backend struct {
	addr      string
	up        *Upstream // nil: Config.Dial or plain TCP
	conns     []*upConn
	dialing   int
	waiters   []waiter // attempts waiting for a connection with room
	forgotten bool
	rr        int
}

// waiter is an attempt of a call waiting in a backend's waiters. The call
// may have left the attempt since (its per-try timeout, its end): link
// and the failure events carry the epoch, and the call ignores them then.
type waiter struct {
	cl    *call
	epoch uint32
}

// upConn is one connection to a backend.
type upConn struct {
	conn
	pool *Pool
	b    *backend

	// Guarded by conn.mu.
	reserved  int // streams ever reserved, to retire the conn before ids run out
	idleTimer *time.Timer
}

// newPool returns a Pool with the upstream side of cfg, whose defaults
// are applied.
func newPool(cfg Config) *Pool {
	sh := &shared{cfg: cfg, bufs: newBufPool(int(cfg.MaxFrameSize)), log: cfg.Logger.With("component", "engine")}
	p := &Pool{sh: sh, backends: make(map[string]*backend), viaUpstream: make(map[backendKey]*backend), all: make(map[*upConn]struct{}), changed: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// usableLocked reports whether uc can take one more stream.
func (uc *upConn) usableLocked() bool {
	return !uc.closed && !uc.draining && uint32(uc.numStreams) < uc.peerMaxStreams && uc.reserved < maxStreamsPerConn
}

// pickLocked returns the usable connection with the fewest streams (ties
// broken round-robin), or nil. Called with p.mu held.
func (b *backend) pickLocked() *upConn {
	var best *upConn
	bestN := int(^uint(0) >> 1)
	n := len(b.conns)
	for i := 0; i < n; i++ {
		uc := b.conns[(b.rr+i)%n]
		uc.mu.Lock()
		if uc.usableLocked() && uc.numStreams < bestN {
			best, bestN = uc, uc.numStreams
		}
		uc.mu.Unlock()
	}
	b.rr++
	return best
}

// open finds or dials a connection for attempt at of cl (at.addr through
// at.up) and links its upstream stream. When a dial is needed the call
// waits (its request frames are held, within the client's stream window)
// and is linked by the dial goroutine. Never called with cl.mu held.
func (p *Pool) open(cl *call, at attempt, fl *flusher) {
	addr := at.addr
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cl.openFailed(at.epoch, codes.Unavailable, "meshd: shutting down", errPoolClosed)
		return
	}
	var b *backend
	if at.up == nil {
		b = p.backends[addr]
	} else {
		b = p.viaUpstream[backendKey{addr, at.up}]
	}
	if b == nil {
		b = &backend{addr: addr, up: at.up}
		if b.up == nil {
			p.backends[addr] = b
		} else {
			p.viaUpstream[backendKey{addr, b.up}] = b
		}
	}
	for {
		uc := b.pickLocked()
		if uc == nil {
			break
		}
		switch cl.link(uc, at.epoch, fl) {
		case linkRetry:
			continue
		case linkOK:
			// Spread load: keep ConnsPerBackend connections.
			if len(b.conns)+b.dialing < p.sh.cfg.ConnsPerBackend {
				p.startDialLocked(b)
			}
		}
		p.mu.Unlock()
		return
	}
	if b.dialing == 0 && len(b.conns) >= maxConnsPerBackend {
		p.mu.Unlock()
		cl.openFailed(at.epoch, codes.Unavailable, "meshd: backend "+addr+" has no stream capacity", errors.New("engine: backend stream capacity exhausted"))
		return
	}
	// The call waits for an upstream stream: for a dial in progress, or
	// for the one started here (no connection yet, or every one at the
	// backend's MAX_CONCURRENT_STREAMS). That is what Target.Pending
	// counts; it is released when the wait ends (link, dial failure,
	// the attempt or the call ending).
	if cl.target.Pending != nil && !cl.holdPending(at.epoch) {
		p.mu.Unlock()
		cl.refusePending(at.epoch)
		return
	}
	b.waiters = append(b.waiters, waiter{cl, at.epoch})
	if b.dialing == 0 {
		p.startDialLocked(b)
	}
	p.mu.Unlock()
}

func (p *Pool) startDialLocked(b *backend) {
	b.dialing++
	p.wg.Add(1)
	go p.dial(b)
}

// dial connects to b, then hands the waiting calls to the connections with
// room, failing them with UNAVAILABLE if the dial failed and none is left.
func (p *Pool) dial(b *backend) {
	defer p.wg.Done()
	uc, err := p.connect(b)
	p.mu.Lock()
	b.dialing--
	if err == nil {
		if p.closed {
			p.mu.Unlock()
			_ = uc.nc.Close()
			p.failWaiters(b, errPoolClosed)
			return
		}
		p.startConnLocked(b, uc)
	} else {
		p.sh.stats.DialErrors.Add(1)
		p.sh.log.Warn("engine: backend dial failed", "addr", b.addr, "upstream", b.upstreamName(), "err", err)
	}
	failed := p.placeWaitersLocked(b, err)
	if b.forgotten && uc != nil {
		uc.mu.Lock()
		uc.draining = true
		if uc.numStreams == 0 {
			uc.closeGracefullyLocked()
		}
		uc.mu.Unlock()
	}
	p.mu.Unlock()
	msg := "meshd: backend " + b.addr + " unavailable"
	if err != nil {
		msg = fmt.Sprintf("meshd: connect to backend %s: %v", b.addr, err)
	}
	for _, w := range failed {
		// The attempt's wait is over (the call releases its
		// Target.Pending slot), whether the call now ends, is rerouted or
		// retried (a new wait takes a new slot).
		w.cl.openFailed(w.epoch, codes.Unavailable, msg, err)
	}
}

// startConnLocked adds uc, just connected, to b and starts its reader and
// writer goroutines. Called with p.mu held.
func (p *Pool) startConnLocked(b *backend, uc *upConn) {
	b.conns = append(b.conns, uc)
	p.all[uc] = struct{}{}
	p.sh.stats.UpstreamConns.Add(1)
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		uc.writeLoop()
	}()
	go func() {
		defer p.wg.Done()
		p.runReader(uc)
	}()
	uc.armIdle()
}

// placeWaitersLocked links b's waiting calls to its connections with room
// once a dial ended (err: how it failed). Calls no connection can take
// keep waiting for a dial still in progress or started here; those left
// without one (the dial failed and no other is under way, or b has
// maxConnsPerBackend connections) are returned, to be failed. Called with
// p.mu held.
func (p *Pool) placeWaitersLocked(b *backend, err error) (failed []waiter) {
	waiters := b.waiters
	b.waiters = nil
	for _, w := range waiters {
		placed := false
		for {
			c := b.pickLocked()
			if c == nil {
				break
			}
			if r := w.cl.link(c, w.epoch, nil); r != linkRetry {
				placed = true
				break
			}
		}
		if placed {
			continue
		}
		if err != nil && b.dialing == 0 {
			failed = append(failed, w)
		} else {
			b.waiters = append(b.waiters, w)
		}
	}
	if len(b.waiters) > 0 && b.dialing == 0 {
		if len(b.conns) < maxConnsPerBackend {
			p.startDialLocked(b)
		} else {
			failed = append(failed, b.waiters...)
			b.waiters = nil
		}
	}
	return failed
}

func (p *Pool) failWaiters(b *backend, err error) {
	p.mu.Lock()
	waiters := b.waiters
	b.waiters = nil
	p.mu.Unlock()
	for _, w := range waiters {
		w.cl.openFailed(w.epoch, codes.Unavailable, "meshd: shutting down", err)
	}
}

// upstreamName is b's Upstream.Name, or "" for h2c.
func (b *backend) upstreamName() string {
	if b.up == nil {
		return ""
	}
	return b.up.Name
}

// dialConn opens a connection to b with its Upstream's Dial, Config.Dial or
// plain TCP. A TLS connection must have negotiated HTTP/2 (ALPN "h2"):
// otherwise the backend would read meshd's preface as garbage, or answer
// in HTTP/1.1, and the dial would fail with a confusing protocol error.
func (p *Pool) dialConn(ctx context.Context, b *backend) (net.Conn, error) {
	var nc net.Conn
	var err error
	switch {
	case b.up != nil && b.up.Dial != nil:
		nc, err = b.up.Dial(ctx, b.addr)
	case p.sh.cfg.Dial != nil:
		nc, err = p.sh.cfg.Dial(ctx, b.addr)
	default:
		var d net.Dialer
		nc, err = d.DialContext(ctx, "tcp", b.addr)
	}
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*tls.Conn); ok {
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		if proto := tc.ConnectionState().NegotiatedProtocol; proto != "h2" {
			_ = nc.Close()
			return nil, fmt.Errorf("backend did not negotiate HTTP/2 over TLS (ALPN %q, want \"h2\")", proto)
		}
	}
	return nc, nil
}

// connect dials addr, exchanges prefaces and waits for the backend's first
// SETTINGS, so stream limits are known before any stream is opened.
func (p *Pool) connect(b *backend) (*upConn, error) {
	cfg := &p.sh.cfg
	ctx, cancel := context.WithTimeout(p.ctx, cfg.DialTimeout)
	defer cancel()
	nc, err := p.dialConn(ctx, b)
	if err != nil {
		if name := b.upstreamName(); name != "" {
			return nil, fmt.Errorf("engine: dial %s (upstream %s): %w", b.addr, name, err)
		}
		return nil, fmt.Errorf("engine: dial %s: %w", b.addr, err)
	}
	// Abort the handshake if the pool closes or the timeout passes.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()
	uc := &upConn{pool: p, b: b}
	uc.init(p.sh, nc, true)
	uc.nextStreamID = 1
	if err := uc.writePreamble(); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("engine: handshake with %s: %w", b.addr, err)
	}
	f, err := uc.rfr.ReadFrame()
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("engine: handshake with %s: %w", b.addr, err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		_ = nc.Close()
		return nil, fmt.Errorf("engine: handshake with %s: first frame is %v, not SETTINGS", b.addr, f.Header().Type)
	}
	uc.mu.Lock()
	// The server may omit MAX_CONCURRENT_STREAMS: then it is unlimited.
	uc.peerMaxStreams = ^uint32(0)
	err = uc.applySettingsLocked(sf, nil)
	uc.mu.Unlock()
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("engine: handshake with %s: %w", b.addr, err)
	}
	if !stop() {
		_ = nc.Close()
		return nil, fmt.Errorf("engine: handshake with %s: %w", b.addr, ctx.Err())
	}
	_ = nc.SetDeadline(time.Time{})
	return uc, nil
}

// runReader is the backend connection's reader goroutine.
func (p *Pool) runReader(uc *upConn) {
	err := uc.readLoop()
	uc.readErrorToClose(err)
	for _, st := range uc.finishRead(err) {
		notReached := st.id == 0 || (uc.gotGoAway && st.id > uc.goAwayLast)
		if notReached {
			st.call.streamEnded(st, ending{mode: endRST, rst: http2.ErrCodeRefusedStream, code: codes.Unavailable, err: ErrRefused, notReached: true})
			continue
		}
		st.call.streamEnded(st, upstreamLost())
	}
	uc.fl.flush()
	uc.mu.Lock()
	if uc.idleTimer != nil {
		uc.idleTimer.Stop()
	}
	uc.mu.Unlock()
	p.removeConn(uc)
}

func (p *Pool) removeConn(uc *upConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := uc.b
	if _, ok := p.all[uc]; ok {
		delete(p.all, uc)
		p.sh.stats.UpstreamConns.Add(-1)
		close(p.changed)
		p.changed = make(chan struct{})
	}
	for i, c := range b.conns {
		if c == uc {
			b.conns = append(b.conns[:i], b.conns[i+1:]...)
			break
		}
	}
	if len(b.conns) == 0 && b.dialing == 0 && len(b.waiters) == 0 {
		if b.up == nil {
			if p.backends[b.addr] == b {
				delete(p.backends, b.addr)
			}
		} else if key := (backendKey{b.addr, b.up}); p.viaUpstream[key] == b {
			delete(p.viaUpstream, key)
		}
	}
}

func (uc *upConn) readLoop() error {
	for {
		if len(uc.fl.dirty) > 0 && !uc.frameBuffered() {
			uc.fl.flushBeforeBlock()
		}
		f, err := uc.rfr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				uc.onStreamError(se)
				continue
			}
			return err
		}
		if uc.closedFlag.Load() {
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			err = uc.onHeaders(f)
		case *http2.DataFrame:
			err = uc.onData(f)
		case *http2.WindowUpdateFrame:
			uc.mu.Lock()
			var st *hstream
			st, err = uc.onWindowUpdateLocked(f, &uc.fl)
			uc.mu.Unlock()
			if st != nil {
				uc.sh.stats.StreamErrors.Add(1)
				st.call.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: http2.ErrCodeFlowControl,
					st: statusInternal("meshd: backend stream window overflow"), err: errors.New("engine: backend stream window overflow")})
			}
		case *http2.RSTStreamFrame:
			err = uc.onRST(f)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				uc.mu.Lock()
				err = uc.applySettingsLocked(f, &uc.fl)
				uc.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				uc.mu.Lock()
				if !uc.pushCtrlLocked(op{kind: opPing, end: true, ping: f.Data}, &uc.fl) {
					err = connError{http2.ErrCodeEnhanceYourCalm, "too many queued control frames"}
				}
				uc.mu.Unlock()
			}
		case *http2.GoAwayFrame:
			uc.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = connError{http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled"}
		default:
		}
		if err != nil {
			return err
		}
	}
}

// onStreamError handles a malformed response header block.
func (uc *upConn) onStreamError(se http2.StreamError) {
	uc.sh.stats.StreamErrors.Add(1)
	uc.mu.Lock()
	st := uc.streams[se.StreamID]
	if st == nil {
		uc.pushCtrlLocked(op{kind: opRST, streamID: se.StreamID, val: uint32(se.Code)}, &uc.fl)
		uc.mu.Unlock()
		return
	}
	uc.mu.Unlock()
	st.call.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: se.Code,
		st: statusInternal("meshd: malformed response from backend"), err: se})
}

func (uc *upConn) onHeaders(f *http2.MetaHeadersFrame) error {
	uc.mu.Lock()
	st := uc.streams[f.StreamID]
	if st == nil {
		idle := uc.isIdleStreamLocked(f.StreamID) || f.StreamID%2 == 0
		uc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "HEADERS on a stream meshd did not open"}
		}
		return nil
	}
	if st.recvDone {
		uc.mu.Unlock()
		return nil
	}
	first := !st.gotHeaders
	st.gotHeaders = true
	end := f.StreamEnded()
	if end {
		st.recvDone = true
	}
	uc.mu.Unlock()
	cl := st.call
	fail := func(msg string) error {
		uc.sh.stats.StreamErrors.Add(1)
		cl.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: http2.ErrCodeProtocol,
			st: statusInternal(msg), err: errors.New("engine: " + msg)})
		return nil
	}
	if f.Truncated {
		return fail(fmt.Sprintf("meshd: backend response header list over %d bytes", uc.rfr.MaxHeaderListSize))
	}
	clen, refused := checkResponseFields(f, first, uc.sh.cfg.MaxHeaderListSize)
	if refused == "" && !first && st.hasLen && st.lenLeft != 0 {
		refused = malformedResponse + "DATA does not match content-length"
	}
	if refused != "" {
		return fail(refused)
	}
	if first {
		httpStatus := f.PseudoValue("status")
		if clen >= 0 {
			st.hasLen, st.lenLeft = true, clen
		}
		fields := editResponse(f.Fields, cl.target.Edits)
		if end {
			code, ok := grpcStatusOf(fields)
			if !ok {
				code = httpStatusToCode(httpStatus)
			}
			fields = cl.ownTimeoutTrailers(code, fields)
			// Trailers-only: the one answer a retry may replace.
			cl.streamEnded(st, ending{mode: endForward, final: op{kind: opHeaders, end: true, fields: fields}, code: code, fl: &uc.fl})
			return nil
		}
		if cl.rs != nil && cl.holdHeaders(st, fields) {
			return nil // retryable: held until the attempt's next frame
		}
		cl.forwardDown(st, op{kind: opHeaders, fields: fields}, &uc.fl)
		return nil
	}
	if !end {
		return fail(malformedResponse + "second HEADERS without END_STREAM")
	}
	fields := filterResponse(f.Fields)
	code, _ := grpcStatusOf(fields)
	fields = cl.ownTimeoutTrailers(code, fields)
	cl.streamEnded(st, ending{mode: endForward, final: op{kind: opHeaders, end: true, fields: fields}, code: code, fl: &uc.fl})
	return nil
}

func (uc *upConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	flen := int64(f.Length)
	data := f.Data()
	uc.mu.Lock()
	if err := uc.consumeConnLocked(flen); err != nil {
		uc.mu.Unlock()
		return err
	}
	st := uc.streams[id]
	if st == nil || st.recvDone || !st.gotHeaders {
		idle := st == nil && (uc.isIdleStreamLocked(id) || id%2 == 0)
		uc.addCreditLocked(nil, flen)
		uc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "DATA on a stream meshd did not open"}
		}
		if st != nil && !st.gotHeaders {
			uc.sh.stats.StreamErrors.Add(1)
			st.call.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: http2.ErrCodeProtocol,
				st: statusInternal("meshd: backend sent DATA before HEADERS"), err: errors.New("engine: DATA before HEADERS")})
		}
		return nil
	}
	if flen > st.inWin {
		uc.addCreditLocked(nil, flen)
		uc.mu.Unlock()
		uc.sh.stats.StreamErrors.Add(1)
		st.call.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: http2.ErrCodeFlowControl,
			st: statusInternal("meshd: backend exceeded stream window"), err: errors.New("engine: backend exceeded stream window")})
		return nil
	}
	end := f.StreamEnded()
	if st.hasLen {
		// RFC 9113 §8.1.1, as for requests (serverConn.onData).
		st.lenLeft -= int64(len(data))
		if st.lenLeft < 0 || (end && st.lenLeft != 0) {
			uc.addCreditLocked(nil, flen)
			uc.mu.Unlock()
			uc.sh.stats.StreamErrors.Add(1)
			st.call.streamEnded(st, ending{mode: endStatus, code: codes.Internal, upCode: http2.ErrCodeProtocol,
				st: statusInternal(malformedResponse + "DATA does not match content-length"), err: errors.New("engine: response DATA does not match content-length")})
			return nil
		}
	}
	st.inWin -= flen
	if end {
		st.recvDone = true
	}
	if st.sendDone && st.recvDone {
		uc.removeStreamLocked(st)
	}
	if pad := flen - int64(len(data)); pad > 0 {
		uc.addCreditLocked(st, pad)
	}
	uc.mu.Unlock()
	if len(data) == 0 && !end {
		return nil
	}
	st.call.onRespData(st, data, end, &uc.fl)
	return nil
}

func (uc *upConn) onRST(f *http2.RSTStreamFrame) error {
	var cs []credit
	uc.mu.Lock()
	st := uc.streams[f.StreamID]
	if st == nil {
		idle := uc.isIdleStreamLocked(f.StreamID)
		uc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		return nil
	}
	uc.discardLocked(st, &cs)
	st.finalQueued, st.sendDone, st.recvDone = true, true, true
	uc.removeStreamLocked(st)
	uc.mu.Unlock()
	applyCredits(cs)
	cl := st.call
	if f.ErrCode == http2.ErrCodeRefusedStream {
		// Never processed: the client (grpc-go and others) retries
		// REFUSED_STREAM transparently.
		cl.streamEnded(st, ending{mode: endRST, rst: http2.ErrCodeRefusedStream, code: codes.Unavailable, err: ErrRefused, notReached: true})
		return nil
	}
	if f.ErrCode == http2.ErrCodeCancel && !cl.deadline.IsZero() && time.Until(cl.deadline) < time.Millisecond {
		// grpc-go backends reset with CANCEL when the grpc-timeout meshd
		// sent runs out; the client must see DEADLINE_EXCEEDED, as it
		// would from meshd's own timer, which this merely beat.
		cl.onDeadline()
		return nil
	}
	cl.streamEnded(st, ending{mode: endRST, rst: f.ErrCode, code: rstToCode(f.ErrCode), fl: &uc.fl,
		err: fmt.Errorf("engine: backend reset the stream: %v", f.ErrCode)})
	return nil
}

// onGoAway stops new streams on the connection; streams above the last
// stream id were not processed and are refused to the client (who retries
// them transparently); the rest finish normally.
func (uc *upConn) onGoAway(f *http2.GoAwayFrame) {
	var cs []credit
	var refused []*hstream
	uc.mu.Lock()
	uc.gotGoAway = true
	uc.goAwayLast = f.LastStreamID
	uc.draining = true
	for id, st := range uc.streams {
		if id > f.LastStreamID {
			refused = append(refused, st)
		}
	}
	for i := 0; i < uc.active.len(); i++ {
		st := uc.active.buf[(uc.active.head+i)%len(uc.active.buf)]
		if st.id == 0 && !st.removed {
			refused = append(refused, st)
		}
	}
	for _, st := range refused {
		uc.discardLocked(st, &cs)
		st.finalQueued, st.sendDone, st.recvDone = true, true, true
		uc.removeStreamLocked(st)
	}
	if uc.numStreams == 0 {
		uc.closeGracefullyLocked()
	}
	uc.mu.Unlock()
	applyCredits(cs)
	if f.ErrCode != http2.ErrCodeNo {
		uc.sh.log.Debug("engine: backend sent GOAWAY", "addr", uc.b.addr, "code", f.ErrCode, "debug", string(f.DebugData()))
	}
	for _, st := range refused {
		st.call.streamEnded(st, ending{mode: endRST, rst: http2.ErrCodeRefusedStream, code: codes.Unavailable, err: ErrRefused, notReached: true})
	}
}

func (uc *upConn) armIdle() {
	d := uc.sh.cfg.IdleTimeout
	if d <= 0 {
		return
	}
	uc.mu.Lock()
	defer uc.mu.Unlock()
	uc.idleTimer = time.AfterFunc(d, uc.checkIdle)
}

func (uc *upConn) checkIdle() {
	d := uc.sh.cfg.IdleTimeout
	uc.mu.Lock()
	defer uc.mu.Unlock()
	if uc.closed {
		return
	}
	if uc.numStreams == 0 {
		if idle := time.Since(uc.idleSince); idle >= d {
			uc.draining = true
			uc.closeGracefullyLocked()
			return
		} else {
			uc.idleTimer.Reset(d - idle)
		}
		return
	}
	uc.idleTimer.Reset(d)
}

// Forget drains the Pool's connections to addr, through every Upstream:
// they take no new streams and close once their in-flight streams end.
// Call it when an endpoint is removed; other Pools' connections to addr
// are not touched. A later stream to addr dials afresh.
func (p *Pool) Forget(addr string) {
	var conns []*upConn
	p.mu.Lock()
	if b := p.backends[addr]; b != nil {
		delete(p.backends, addr)
		b.forgotten = true
		conns = append(conns, b.conns...)
	}
	// A scan, not a lookup: an endpoint's removal is rare next to calls,
	// which keep their single lookup by (address, Upstream).
	for key, b := range p.viaUpstream {
		if key.addr == addr {
			delete(p.viaUpstream, key)
			b.forgotten = true
			conns = append(conns, b.conns...)
		}
	}
	p.mu.Unlock()
	for _, uc := range conns {
		uc.mu.Lock()
		uc.draining = true
		if uc.numStreams == 0 {
			uc.closeGracefullyLocked()
		}
		uc.mu.Unlock()
	}
}

// drain makes every connection close once idle (used by Server.Shutdown).
func (p *Pool) drain() {
	p.mu.Lock()
	conns := make([]*upConn, 0, len(p.all))
	for uc := range p.all {
		conns = append(conns, uc)
	}
	p.mu.Unlock()
	for _, uc := range conns {
		uc.mu.Lock()
		uc.draining = true
		if uc.numStreams == 0 {
			uc.closeGracefullyLocked()
		}
		uc.mu.Unlock()
	}
}

// waitIdle waits until every connection has closed, or ctx is done.
func (p *Pool) waitIdle(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, ch := len(p.all), p.changed
		p.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close stops dials, closes every connection and waits for all goroutines.
func (p *Pool) close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]*upConn, 0, len(p.all))
	for uc := range p.all {
		conns = append(conns, uc)
	}
	var waiters []waiter
	for _, b := range p.backends {
		waiters = append(waiters, b.waiters...)
		b.waiters = nil
	}
	for _, b := range p.viaUpstream {
		waiters = append(waiters, b.waiters...)
		b.waiters = nil
	}
	p.mu.Unlock()
	p.cancel()
	for _, uc := range conns {
		uc.hardClose(errPoolClosed)
	}
	for _, w := range waiters {
		w.cl.openFailed(w.epoch, codes.Unavailable, "meshd: shutting down", errPoolClosed)
	}
	p.wg.Wait()
}
