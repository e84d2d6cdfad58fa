package engine

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// drainPing is the payload of the PING that separates the two GOAWAYs of a
// graceful shutdown.
const drainPing = "meshdrai"

// serverConn is one client (downstream) connection.
type serverConn struct {
	conn
	srv    *Server
	ctx    context.Context
	cancel context.CancelFunc

	// Reader goroutine only.
	req         Request
	hdr         Header
	sawSettings bool
	ab          abuseScanner // abuse rules and frame counts (abuse.go)

	ka keepalive // age, keepalive and ping policy (keepalive.go)

	// Guarded by conn.mu.
	drainPhase  int    // 0 none, 1 first GOAWAY sent, 2 final GOAWAY sent
	drainDebug  string // debug data of both drain GOAWAYs ("max_age", "max_idle")
	acceptLimit uint32 // streams above it are ignored (after the final GOAWAY)
	drainTimer  *time.Timer
	idleTimer   *time.Timer
}

func newServerConn(s *Server, ctx context.Context) *serverConn {
	sc := &serverConn{srv: s, acceptLimit: 1<<31 - 1}
	sc.ctx, sc.cancel = context.WithCancel(ctx)
	return sc
}

// serve runs the connection until it closes: the calling goroutine is the
// reader; the writer is a second goroutine that serve waits for.
func (sc *serverConn) serve() {
	defer sc.cancel()
	sc.sh.cfg.abuse.accepted.Add(1)
	early, ok := sc.handshake()
	if !ok {
		_ = sc.nc.Close()
		return
	}
	sc.req.RemoteAddr = sc.nc.RemoteAddr()
	sc.req.Header = &sc.hdr
	if cc := sc.sh.cfg.ConnContext; cc != nil {
		// Only this goroutine reads sc.ctx (Direct runs on it), and no
		// stream has been read yet. The derived context is a child of
		// the connection's, so cancelling that still ends it.
		sc.ctx = cc(sc.ctx, sc.nc)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		sc.writeLoop()
	}()
	sc.armIdle()
	sc.armKeepalive()
	err := early
	if err == nil {
		err = sc.readLoop()
	}
	sc.endRead(err)
	<-done
	// After closeForAbuse, the writer half-closed the socket and left the
	// close to the reader; everywhere else this is a second close.
	_ = sc.nc.Close()
	sc.mu.Lock()
	if sc.drainTimer != nil {
		sc.drainTimer.Stop()
	}
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.stopKeepaliveLocked()
	sc.mu.Unlock()
}

// handshake writes meshd's preamble and reads the client's preface. ok
// false: the connection is not HTTP/2, or the handshake timed out or
// failed; the caller closes it. A non-nil early error is an abuse rule
// broken in the same read as the preface, which the connection is to be
// closed for once it is answered as HTTP/2.
func (sc *serverConn) handshake() (early error, ok bool) {
	ctr := sc.sh.cfg.abuse
	// The handshake deadline covers the TLS handshake (which the first
	// write runs on a TLS connection), the preface and the first SETTINGS
	// frame; readLoop lifts it when that arrives.
	_ = sc.nc.SetDeadline(time.Now().Add(sc.sh.cfg.HandshakeTimeout))
	if err := sc.writePreamble(); err != nil {
		if isTimeout(err) {
			ctr.closed[AbuseHandshakeTimeout].Add(1)
		}
		return nil, false
	}
	_ = sc.nc.SetWriteDeadline(time.Time{})
	// Nothing was read yet, so the reader can be put under the buffer.
	sc.ab.init(sc.src, ctr, &sc.sh.cfg)
	sc.br.Reset(&sc.ab)
	var pre [len(http2.ClientPreface)]byte
	n, err := io.ReadFull(sc.br, pre[:])
	// A rule broken in the same read as the preface fails that read; the
	// scanner checked the preface (abuseError comes after a good one), so
	// the connection is answered as HTTP/2 and closed for the rule.
	var aerr abuseError
	if errors.As(err, &aerr) {
		return aerr, true
	}
	if err != nil || string(pre[:]) != http2.ClientPreface {
		switch {
		case string(pre[:n]) != http2.ClientPreface[:n]:
			ctr.closed[AbuseNotHTTP2].Add(1)
		case isTimeout(err):
			ctr.closed[AbuseHandshakeTimeout].Add(1)
		}
		return nil, false
	}
	return nil, true
}

// endRead runs when the reader stops with err: it counts why, sends the
// GOAWAY err calls for, if any, and ends the calls left on the connection
// (the reader is one of the goroutines that may end a call: call.go).
func (sc *serverConn) endRead(err error) {
	sc.ab.flush()
	var aerr abuseError
	switch {
	case errors.As(err, &aerr):
		sc.closeForAbuse(aerr)
	case !sc.sawSettings && isTimeout(err):
		sc.sh.cfg.abuse.closed[AbuseHandshakeTimeout].Add(1)
	default:
		sc.countGoAway(err)
	}
	sc.readErrorToClose(err)
	for _, st := range sc.finishRead(err) {
		if st.call != nil {
			st.call.endCall(ending{mode: endClientGone, code: codes.Canceled, err: ErrClientGone, fl: &sc.fl})
		}
	}
	sc.fl.flush()
}

func (sc *serverConn) readLoop() error {
	for {
		// A frame already buffered arrived with the read that brought it:
		// activity is stamped once per read that may block, not per frame.
		mayBlock := (sc.ka.track || len(sc.fl.dirty) > 0) && !sc.frameBuffered()
		if mayBlock && len(sc.fl.dirty) > 0 {
			sc.fl.flushBeforeBlock()
		}
		f, err := sc.rfr.ReadFrame()
		if mayBlock {
			sc.ka.markRead()
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				sc.onStreamError(se)
				continue
			}
			return err
		}
		if sc.closedFlag.Load() {
			continue // closing: drain until the peer's EOF
		}
		if !sc.sawSettings {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
			}
			sc.sawSettings = true
			sc.endHandshake()
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			err = sc.onHeaders(f)
		case *http2.DataFrame:
			err = sc.onData(f)
		case *http2.WindowUpdateFrame:
			err = sc.onWindowUpdate(f)
		case *http2.RSTStreamFrame:
			err = sc.onRST(f)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				sc.mu.Lock()
				err = sc.applySettingsLocked(f, &sc.fl)
				sc.mu.Unlock()
			}
		case *http2.PingFrame:
			err = sc.onPing(f)
		case *http2.GoAwayFrame:
			sc.mu.Lock()
			// The client opens no more streams; close once the open ones end.
			sc.draining = true
			if sc.numStreams == 0 {
				sc.closeGracefullyLocked()
			}
			sc.mu.Unlock()
		case *http2.PushPromiseFrame:
			err = connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
		case *http2.PriorityFrame:
			// Priorities are ignored (RFC 9113 §5.3.2), but a stream cannot
			// depend on itself (§5.3.1).
			if f.StreamDep == f.StreamID {
				sc.mu.Lock()
				st := sc.streams[f.StreamID]
				sc.mu.Unlock()
				sc.streamError(f.StreamID, st, http2.ErrCodeProtocol, "stream depends on itself")
			}
		default:
			// PRIORITY_UPDATE and unknown extension frames are ignored.
		}
		if err != nil {
			return err
		}
	}
}

func (sc *serverConn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		switch string(f.Data[:]) {
		case drainPing:
			sc.finishDrain()
		case endPing:
			sc.onEndPingAck()
		}
		return nil
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := sc.ab.onPing(sc.outWin); err != nil {
		return err
	}
	if !sc.pushCtrlLocked(op{kind: opPing, end: true, ping: f.Data}, &sc.fl) {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many queued control frames"}
	}
	// As grpc-go, the PING is answered before the policy is applied: the
	// ACK precedes the GOAWAY.
	return sc.checkPingPolicyLocked()
}

func (sc *serverConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	if err := sc.ab.onWindowUpdate(sc.outWin); err != nil {
		sc.mu.Unlock()
		return err
	}
	st, err := sc.onWindowUpdateLocked(f, &sc.fl)
	if err == nil && f.StreamID == 0 {
		sc.ab.connIncrements += int64(f.Increment)
	}
	sc.mu.Unlock()
	if st != nil && st.call != nil {
		sc.streamError(st.id, st, http2.ErrCodeFlowControl, "stream window above 2^31-1")
	}
	return err
}

// streamError answers a stream error the client caused (RFC 9113 §5.4.2):
// RST_STREAM(code) on stream id. st is the stream if it is still in the
// table: its call ends with the reset, or, if the call had already ended
// (meshd answered it), the stream is reset all the same (call.dropStale),
// so the client learns the code whatever meshd had answered. Client
// reader goroutine only.
func (sc *serverConn) streamError(id uint32, st *hstream, code http2.ErrCode, reason string) {
	sc.sh.stats.StreamErrors.Add(1)
	sc.sh.cfg.abuse.reset(code)
	if st != nil {
		st.call.endCall(ending{mode: endRST, rst: code, code: codes.Internal, err: errors.New("engine: client stream error: " + reason), fl: &sc.fl})
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if !sc.pushCtrlLocked(op{kind: opRST, streamID: id, val: uint32(code)}, &sc.fl) && !sc.closed {
		sc.sh.cfg.abuse.goAway(http2.ErrCodeEnhanceYourCalm)
		sc.goAwayLocked(http2.ErrCodeEnhanceYourCalm, "too many queued control frames")
	}
}

// closedStreamFrame answers DATA or HEADERS (what) on a client stream
// that is no longer in the table (closed.go): an error if the client had
// closed its side, nothing if meshd had reset the stream. id is not idle.
// Client reader goroutine, without conn.mu.
func (sc *serverConn) closedStreamFrame(id uint32, how closeKind, what string) error {
	switch how {
	case closedPeerEnded:
		return connError{http2.ErrCodeStreamClosed, what + " on a stream the client ended"}
	case closedPeerReset:
		sc.streamError(id, nil, http2.ErrCodeStreamClosed, what+" after the client's RST_STREAM")
	}
	return nil
}

// onStreamError handles a stream error found by the Framer (malformed
// header block, zero window increment).
func (sc *serverConn) onStreamError(se http2.StreamError) {
	sc.mu.Lock()
	st := sc.streams[se.StreamID]
	if st == nil && se.Cause != nil && se.StreamID%2 == 1 && se.StreamID > sc.maxPeerStreamID {
		// A header block the Framer decoded and refused (it names the
		// field): the stream was opened, and is now closed by meshd.
		sc.maxPeerStreamID = se.StreamID
		sc.recent.add(se.StreamID, closedByMeshd)
	}
	sc.mu.Unlock()
	reason := "malformed frame"
	if se.Cause != nil {
		reason = se.Cause.Error()
	}
	sc.streamError(se.StreamID, st, se.Code, reason)
}

func (sc *serverConn) onRST(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	st := sc.streams[f.StreamID]
	if st == nil {
		idle := sc.isIdleStreamLocked(f.StreamID)
		if !idle {
			// It crossed meshd's RST_STREAM, or came later: either way
			// the client has reset the stream from now on.
			sc.recent.peerReset(f.StreamID)
		}
		sc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		return nil
	}
	st.rstRecv = true
	sc.mu.Unlock()
	// The client cancelled: nothing more is sent to it, and the backend
	// stream is cancelled so the backend's handler sees its context end.
	st.call.endCall(ending{mode: endClientGone, code: codes.Canceled, err: ErrClientGone, upCode: http2.ErrCodeCancel, fl: &sc.fl})
	return nil
}

func (sc *serverConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	flen := int64(f.Length)
	data := f.Data()
	sc.mu.Lock()
	if err := sc.consumeConnLocked(flen); err != nil {
		sc.mu.Unlock()
		return err
	}
	st := sc.streams[id]
	if st == nil {
		idle := sc.isIdleStreamLocked(id)
		how := closedUnknown
		if !idle && id <= sc.acceptLimit {
			how = sc.recent.lookup(id)
		}
		sc.addCreditLocked(nil, flen)
		sc.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
		}
		return sc.closedStreamFrame(id, how, "DATA")
	}
	if st.recvDone {
		// Half-closed (remote): DATA after END_STREAM is a stream error
		// (RFC 9113 §5.1, §6.1); otherwise meshd has reset the stream and
		// this DATA was sent before the client saw the RST_STREAM.
		sc.addCreditLocked(nil, flen)
		sc.mu.Unlock()
		if st.endRecv {
			sc.streamError(id, st, http2.ErrCodeStreamClosed, "DATA after END_STREAM")
		}
		return nil
	}
	if flen > st.inWin {
		sc.addCreditLocked(nil, flen)
		sc.mu.Unlock()
		sc.streamError(id, st, http2.ErrCodeFlowControl, "stream flow-control window exceeded")
		return nil
	}
	end := f.StreamEnded()
	if st.hasLen {
		// RFC 9113 §8.1.1: the DATA must add up to the content-length.
		st.lenLeft -= int64(len(data))
		if st.lenLeft < 0 || (end && st.lenLeft != 0) {
			sc.addCreditLocked(nil, flen)
			sc.mu.Unlock()
			sc.streamError(id, st, http2.ErrCodeProtocol, "DATA does not match content-length")
			return nil
		}
	}
	st.inWin -= flen
	if end {
		st.recvDone, st.endRecv = true, true
	}
	if st.finalQueued {
		// The response is complete (or failed); the request body is moot.
		sc.addCreditLocked(nil, flen)
		if st.sendDone && st.recvDone {
			sc.removeStreamLocked(st)
		}
		sc.mu.Unlock()
		return nil
	}
	if pad := flen - int64(len(data)); pad > 0 {
		sc.addCreditLocked(st, pad)
	}
	sc.mu.Unlock()
	if len(data) == 0 && !end {
		return nil // an empty DATA frame carries nothing to forward
	}
	st.call.onReqData(data, end, &sc.fl)
	return nil
}

func (sc *serverConn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	selfDep := f.HasPriority() && f.Priority.StreamDep == id
	sc.mu.Lock()
	if id%2 == 0 {
		sc.mu.Unlock()
		return connError{http2.ErrCodeProtocol, "client stream id is even"}
	}
	if id > sc.acceptLimit {
		if id > sc.maxPeerStreamID {
			sc.maxPeerStreamID = id
		}
		sc.mu.Unlock()
		return nil // after the final GOAWAY: not processed, the client retries elsewhere
	}
	if id <= sc.maxPeerStreamID {
		st := sc.streams[id]
		how := closedUnknown
		if st == nil {
			how = sc.recent.lookup(id)
		}
		sc.mu.Unlock()
		switch {
		case st != nil && selfDep:
			sc.streamError(id, st, http2.ErrCodeProtocol, "stream depends on itself")
			return nil
		case st != nil:
			return sc.onTrailers(st, f)
		case how == closedUnknown:
			// Never opened (skipped when a higher id was), or closed too
			// long ago to tell: either way an attempt to open a stream
			// with an id already used (RFC 9113 §5.1.1).
			return connError{http2.ErrCodeProtocol, "HEADERS on a stream id below one already used"}
		}
		return sc.closedStreamFrame(id, how, "HEADERS")
	}
	sc.maxPeerStreamID = id
	end := f.StreamEnded()
	refuse := http2.ErrCode(0)
	switch {
	case selfDep:
		refuse = http2.ErrCodeProtocol // §5.3.1
	case uint32(sc.numStreams) >= sc.sh.cfg.MaxConcurrentStreams:
		refuse = http2.ErrCodeRefusedStream // §5.1.2
		sc.sh.stats.RefusedStreams.Add(1)
	}
	if refuse == http2.ErrCodeProtocol {
		sc.recent.add(id, closedHow(end, false)) // opened, and closed at once by meshd
		sc.mu.Unlock()
		sc.streamError(id, nil, refuse, "stream depends on itself")
		return nil
	}
	if refuse == http2.ErrCodeRefusedStream {
		// Counted as RefusedStreams, not as a stream error.
		sc.recent.add(id, closedHow(end, false))
		ok := sc.pushCtrlLocked(op{kind: opRST, streamID: id, val: uint32(refuse)}, &sc.fl)
		sc.mu.Unlock()
		if !ok {
			return connError{http2.ErrCodeEnhanceYourCalm, "too many queued control frames"}
		}
		return nil
	}
	st := &hstream{c: &sc.conn, id: id, inWin: sc.ourInitWin, outWin: sc.peerInitWin, gotHeaders: true}
	st.q = st.qbuf[:0]
	cl := &call{sc: sc, down: st, dlIndex: -1}
	st.call = cl
	if end {
		st.recvDone, st.endRecv = true, true
	}
	sc.streams[id] = st
	sc.numStreams++
	sc.sh.stats.ActiveStreams.Add(1)
	sc.sh.stats.StreamsTotal.Add(1)
	sc.mu.Unlock()
	sc.startCall(cl, f)
	return nil
}

// onTrailers handles a second HEADERS block from the client (request
// trailers, unusual in gRPC): it must end the stream, carry no
// pseudo-header or connection-specific field and close a message whose
// DATA matched its content-length (RFC 9113 §8.1, §8.1.1, §8.2.2); then
// it is forwarded.
func (sc *serverConn) onTrailers(st *hstream, f *http2.MetaHeadersFrame) error {
	var reason string
	code := http2.ErrCodeProtocol
	sc.mu.Lock()
	switch {
	case st.endRecv:
		reason, code = "HEADERS after END_STREAM", http2.ErrCodeStreamClosed // §5.1 half-closed (remote)
	case st.recvDone:
		// meshd reset the stream; the client sent these before it knew.
		sc.mu.Unlock()
		return nil
	case !f.StreamEnded():
		reason = "second HEADERS without END_STREAM"
	case st.hasLen && st.lenLeft != 0:
		reason = "DATA does not match content-length"
	default:
		reason = checkTrailerFields(f)
	}
	if reason != "" {
		sc.mu.Unlock()
		sc.streamError(st.id, st, code, reason)
		return nil
	}
	if f.Truncated || headerListSize(f.Fields) > uint64(sc.sh.cfg.MaxHeaderListSize) {
		// Over the header list size meshd advertised.
		st.recvDone, st.endRecv = true, true
		sc.mu.Unlock()
		st.call.fail(codes.ResourceExhausted, "meshd: request trailer list too large", errors.New("engine: request trailers over MaxHeaderListSize"), false)
		return nil
	}
	st.recvDone, st.endRecv = true, true
	final := st.finalQueued
	if final && st.sendDone {
		sc.removeStreamLocked(st)
	}
	sc.mu.Unlock()
	if final {
		return nil
	}
	st.call.forwardUp(op{kind: opHeaders, end: true, fields: filterResponse(f.RegularFields())}, &sc.fl)
	return nil
}

// startCall validates the request headers, asks the Director for a target
// and opens the upstream stream.
func (sc *serverConn) startCall(cl *call, f *http2.MetaHeadersFrame) {
	req, ok := sc.requestHeaders(cl, f)
	if !ok {
		return
	}
	sc.hdr.fields = req.regular
	sc.req.Method = req.path
	sc.req.Authority = req.authority
	sc.req.Deadline = req.deadline
	sc.req.GRPCWeb = req.opaque
	target, err := sc.srv.director.Direct(sc.ctx, &sc.req)
	sc.hdr.fields = nil
	if err != nil {
		s := status.Convert(err)
		cl.endCall(ending{mode: endStatus, st: s, code: s.Code(), err: err, fl: &sc.fl})
		return
	}
	cl.start(target, &req, &sc.fl)
}

// reqHeaders is what startCall takes from a request's HEADERS.
type reqHeaders struct {
	method          string // "POST", or OPTIONS for an opaque CORS preflight
	path, authority string
	opaque          bool                // a gRPC-Web request or preflight (Config.GRPCWeb)
	regular         []hpack.HeaderField // valid until the next header block is read
	deadline        time.Time           // the client's, from grpc-timeout; zero if none
	now             time.Time           // when the HEADERS were taken
	end             bool                // the HEADERS ended the stream
}

// requestHeaders checks a request's HEADERS (RFC 9113 §8.3.1, gRPC's
// content-type, POST, grpc-timeout) and takes what the call needs from
// them. ok false: they are malformed, and the call was ended with the
// status or reset they call for.
func (sc *serverConn) requestHeaders(cl *call, f *http2.MetaHeadersFrame) (req reqHeaders, ok bool) {
	if f.Truncated || headerListSize(f.Fields) > uint64(sc.sh.cfg.MaxHeaderListSize) {
		cl.endCall(ending{mode: endStatus, code: codes.ResourceExhausted, httpStatus: "431",
			st: status.New(codes.ResourceExhausted, "meshd: request header list too large")})
		return req, false
	}
	var method, host, contentType, timeout string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			req.path = hf.Value
		case ":authority":
			req.authority = hf.Value
		}
	}
	req.regular = f.RegularFields()
	for _, hf := range req.regular {
		switch hf.Name {
		case "content-type":
			contentType = hf.Value
		case "grpc-timeout":
			timeout = hf.Value
		case "host":
			host = hf.Value
		}
	}
	// What RFC 9113 calls malformed is reset before anything gRPC-specific
	// is looked at, and never reaches the Director or a backend.
	clen, bad := checkRequestFields(f)
	if bad != "" {
		sc.streamError(f.StreamID, cl.down, http2.ErrCodeProtocol, "malformed request: "+bad)
		return req, false
	}
	if clen >= 0 {
		cl.down.hasLen, cl.down.lenLeft = true, clen
	}
	req.method = method
	if !isGRPCContentType(contentType) || method != "POST" {
		// Not a gRPC call. On a grpc_web listener a gRPC-Web request or
		// a CORS preflight goes on as an opaque stream (Config.GRPCWeb);
		// native gRPC never gets here, so it pays nothing for it.
		req.opaque = sc.sh.cfg.GRPCWeb && isGRPCWebRequest(method, contentType)
		switch {
		case req.opaque:
		case !isGRPCContentType(contentType):
			cl.endCall(ending{mode: endStatus, code: codes.InvalidArgument, httpStatus: "415",
				st: status.Newf(codes.InvalidArgument, "meshd: invalid gRPC request content-type %q", contentType)})
			return req, false
		default:
			cl.endCall(ending{mode: endStatus, code: codes.Internal, httpStatus: "405",
				st: status.Newf(codes.Internal, "meshd: :method %q, want POST", method)})
			return req, false
		}
	}
	if req.authority == "" {
		req.authority = host
	}
	req.now = time.Now()
	if timeout != "" {
		d, ok := parseTimeout(timeout)
		if !ok {
			cl.endCall(ending{mode: endStatus, code: codes.Internal, httpStatus: "400",
				st: status.Newf(codes.Internal, "meshd: malformed grpc-timeout %q", timeout)})
			return req, false
		}
		req.deadline = req.now.Add(d)
	}
	req.end = f.StreamEnded()
	return req, true
}

// isGRPCContentType reports whether ct is application/grpc or a subtype
// (application/grpc+proto, application/grpc;...).
func isGRPCContentType(ct string) bool {
	const base = "application/grpc"
	if !strings.HasPrefix(ct, base) {
		return false
	}
	if len(ct) == len(base) {
		return true
	}
	switch ct[len(base)] {
	case '+', ';':
		return true
	}
	return false
}

// isGRPCWebRequest reports whether a request with method and content
// type ct is gRPC-Web (a POST of application/grpc-web, +proto, -text, or
// a subtype: grpc-web's JS clients send application/grpc-web-text and
// application/grpc-web+proto) or a CORS preflight (OPTIONS), which
// browsers send before a cross-origin gRPC-Web call.
func isGRPCWebRequest(method, ct string) bool {
	if method == "OPTIONS" {
		return true
	}
	const base = "application/grpc-web"
	if method != "POST" || len(ct) < len(base) || !strings.EqualFold(ct[:len(base)], base) {
		return false
	}
	if len(ct) == len(base) {
		return true
	}
	switch ct[len(base)] {
	case '+', ';', '-':
		return true
	}
	return false
}

// upstreamHeaders builds the request header block sent to the backend:
// fresh pseudo headers (:method is POST but for an opaque stream's own), the client's fields minus hop-by-hop ones,
// grpc-timeout (re-added per attempt with the remaining budget), the
// fields the Director replaces and those the route's edits (e, may be nil)
// remove or set, then te: trailers, the edits' sets and adds, and the
// Director's fields.
func upstreamHeaders(method, path, authority string, regular, extra []hpack.HeaderField, e *HeaderEdits) []hpack.HeaderField {
	n := len(regular) + len(extra) + 6
	if e != nil {
		n += len(e.RequestSet) + len(e.RequestAdd)
	}
	out := make([]hpack.HeaderField, 0, n)
	out = append(out,
		hpack.HeaderField{Name: ":method", Value: method},
		hpack.HeaderField{Name: ":scheme", Value: "http"},
		hpack.HeaderField{Name: ":path", Value: path})
	if authority != "" {
		out = append(out, hpack.HeaderField{Name: ":authority", Value: authority})
	}
	for _, f := range regular {
		if isHopByHop(f.Name) || f.Name == "te" || f.Name == "grpc-timeout" || replaced(f.Name, extra) {
			continue
		}
		if e != nil && dropped(f.Name, e.RequestRemove, e.RequestSet) {
			continue
		}
		out = append(out, f)
	}
	out = append(out, hpack.HeaderField{Name: "te", Value: "trailers"})
	if e != nil {
		out = append(out, e.RequestSet...)
		out = append(out, e.RequestAdd...)
	}
	return append(out, extra...)
}

func replaced(name string, extra []hpack.HeaderField) bool {
	for _, e := range extra {
		if e.Name == name {
			return true
		}
	}
	return false
}

// startDrain begins a graceful shutdown: GOAWAY with the highest stream id
// (no stream is refused yet), then a PING; when the PING returns, every
// stream the client started before seeing the GOAWAY has arrived, and the
// final GOAWAY names the last one (RFC 9113 §6.8).
func (sc *serverConn) startDrain() { sc.startDrainReason("") }

// startDrainReason is startDrain with debug data in both GOAWAYs, as
// grpc-go's Drain sends ("max_age", "max_idle").
func (sc *serverConn) startDrainReason(debug string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closed || sc.drainPhase > 0 {
		return
	}
	sc.drainPhase = 1
	sc.drainDebug = debug
	if sc.pushCtrlLocked(op{kind: opGoAway, streamID: 1<<31 - 1, val: uint32(http2.ErrCodeNo), data: debugData(debug)}, nil) {
		sc.sh.cfg.abuse.goAway(http2.ErrCodeNo)
	}
	sc.pushCtrlLocked(op{kind: opPing, ping: [8]byte([]byte(drainPing))}, nil)
	sc.drainTimer = time.AfterFunc(closeTimeout, sc.finishDrain)
}

// finishDrain sends the final GOAWAY (on the PING's ACK, or after
// closeTimeout if the client does not answer).
func (sc *serverConn) finishDrain() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closed || sc.drainPhase != 1 {
		return
	}
	sc.drainPhase = 2
	sc.acceptLimit = sc.maxPeerStreamID
	if sc.pushCtrlLocked(op{kind: opGoAway, streamID: sc.maxPeerStreamID, val: uint32(http2.ErrCodeNo), data: debugData(sc.drainDebug)}, nil) {
		sc.sh.cfg.abuse.goAway(http2.ErrCodeNo)
	}
	sc.draining = true
	if sc.numStreams == 0 {
		sc.closeGracefullyLocked()
	}
}

// debugData is a GOAWAY's debug data: nil when there is none.
func debugData(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// armIdle starts the idle check when Config.IdleTimeout is set.
func (sc *serverConn) armIdle() {
	d := sc.sh.cfg.IdleTimeout
	if d <= 0 {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.idleTimer = time.AfterFunc(d, sc.checkIdle)
}

func (sc *serverConn) checkIdle() {
	d := sc.sh.cfg.IdleTimeout
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	if sc.numStreams == 0 {
		if idle := time.Since(sc.idleSince); idle >= d {
			sc.mu.Unlock()
			sc.startDrainReason("max_idle")
			return
		} else {
			sc.idleTimer.Reset(d - idle)
		}
	} else {
		sc.idleTimer.Reset(d)
	}
	sc.mu.Unlock()
}

// endHandshake lifts the handshake deadline once the first SETTINGS frame
// arrived. A close that started meanwhile set its own read deadline, which
// is put back.
func (sc *serverConn) endHandshake() {
	_ = sc.nc.SetReadDeadline(time.Time{})
	if sc.closedFlag.Load() {
		_ = sc.nc.SetReadDeadline(time.Now().Add(closeTimeout))
	}
}

// closeForAbuse closes a connection that broke an abuse rule (abuse.go):
// GOAWAY with the rule's code and name; once the writer has taken the
// GOAWAY, the connection shuts down (the writer half-closes the socket);
// meanwhile and then, the reader discards what the client still sends
// until it closes, for at most abuseDrainTime and abuseDrainMax bytes,
// and serve closes the socket. Closing at once with the client's flood
// unread would send a TCP reset, which can destroy the GOAWAY before the
// client reads it. The shutdown waits for the writer to take the GOAWAY
// because a writer that finds its connection closed after a write exits
// without collecting what was queued meanwhile.
func (sc *serverConn) closeForAbuse(aerr abuseError) {
	ctr := sc.sh.cfg.abuse
	ctr.closed[aerr.reason].Add(1)
	reason := aerr.reason.String()
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	// ctrl only shrinks when the writer takes all of it: once it is not
	// longer than pos, the GOAWAY is on its way.
	pos := len(sc.ctrl)
	if sc.pushCtrlLocked(op{kind: opGoAway, streamID: sc.maxPeerStreamID, val: uint32(aerr.code), data: []byte(reason)}, nil) {
		ctr.goAway(aerr.code)
	}
	sc.mu.Unlock()
	sc.sh.stats.ProtocolErrors.Add(1)
	sc.sh.log.Debug("engine: closing abusive client connection", "remote", sc.nc.RemoteAddr(), "reason", reason)

	shut := false
	shutdown := func() {
		sc.mu.Lock()
		if !shut && (len(sc.ctrl) <= pos || sc.closed) {
			sc.shutdownLocked(connError{code: aerr.code, reason: reason})
			sc.graceful = true
			shut = true
		}
		sc.mu.Unlock()
	}
	// Read the socket directly: the scanner's verdict is in.
	sc.br.Reset(sc.nc)
	end := time.Now().Add(abuseDrainTime)
	for total := 0; total < abuseDrainMax; {
		shutdown()
		deadline := end
		if poll := time.Now().Add(abuseShutdownPoll); !shut && poll.Before(end) {
			deadline = poll
		}
		_ = sc.nc.SetReadDeadline(deadline)
		n, err := sc.br.Discard(bufioSize)
		total += n
		if err != nil && !(isTimeout(err) && !shut && time.Now().Before(end)) {
			break
		}
	}
	pos = math.MaxInt // the writer is stuck: shut down without the GOAWAY
	shutdown()
}

// countGoAway counts the GOAWAY readErrorToClose is about to send for err,
// if any.
func (sc *serverConn) countGoAway(err error) {
	var code http2.ErrCode
	var cerr connError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &cerr):
		code = cerr.code
	case errors.As(err, &ce):
		code = http2.ErrCode(ce)
	case errors.Is(err, http2.ErrFrameTooLarge):
		code = http2.ErrCodeFrameSize
	default:
		return
	}
	if !sc.closedFlag.Load() {
		sc.sh.cfg.abuse.goAway(code)
	}
}

// isTimeout reports whether err is a deadline expiry.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
