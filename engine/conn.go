package engine

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/internal/rawsock"
)

// The connection core below is shared by client-facing connections
// (serverConn) and backend connections (upConn). Each connection has exactly
// two goroutines: a reader that owns the read Framer and HPACK decoder, and a
// writer that, while it holds the write token, owns the write Framer, the
// HPACK encoder and the output buffer.
//
// Everything the two share, and everything other goroutines touch (queues,
// windows, stream table), is guarded by conn.mu. The reader of one
// connection hands frames to the writer of another by pushing ops onto a
// stream queue under that connection's mutex; no goroutine ever holds two
// connections' mutexes at once.
//
// Frames are written by whoever holds the connection's write token
// (conn.writing): normally the writer goroutine, which batches queued frames
// and flushes when its queue is empty. When a reader queues frames for a
// connection whose writer is idle, it may instead write them itself, with a
// non-blocking write, just before it would block reading its own socket
// (see flusher): that saves two goroutine hand-offs per unary call, and
// whatever the socket does not take at once is left to the writer
// goroutine, so a slow peer never blocks a reader.
//
// Flow-control credit passes through: when the writer has written forwarded
// DATA, it returns the bytes as credit to the connection they came from,
// which then sends WINDOW_UPDATE. Data buffered in meshd is therefore bounded
// by the windows meshd advertised.

const (
	maxWindow = 1<<31 - 1

	// maxBatchOps and maxBatchBytes bound one writer batch, so the writer
	// returns credit and re-reads its queues regularly, and conn.mu is never
	// held for long.
	maxBatchOps   = 256
	maxBatchBytes = 256 << 10
	// streamQuantum is how much DATA one stream may write per round before
	// the writer moves to the next stream (round robin).
	streamQuantum = 64 << 10
	// maxQueuedCtrl bounds control frames (PING/SETTINGS acks, RST_STREAM,
	// WINDOW_UPDATE) queued for a peer that does not read: past it the
	// connection is closed with ENHANCE_YOUR_CALM (x/net uses the same bound).
	maxQueuedCtrl = 10000
	// closeTimeout bounds how long a closing connection may spend flushing
	// its last frames and waiting for the peer's EOF.
	closeTimeout = time.Second
	// bufioSize is the size of each connection's read buffer, and the
	// amount of encoded output after which the writer goroutine writes to
	// the socket even though more frames are pending.
	bufioSize = 32 << 10
)

type opKind uint8

const (
	opData opKind = iota
	opHeaders
	opRST
	opWindowUpdate
	opPing
	opSettingsAck
	opGoAway
)

// op is one frame (or, for opHeaders, one header block) waiting to be
// written. Ops sit either in conn.ctrl (connection-level and stream-less
// frames, written first, in order) or in a stream's queue (HEADERS, DATA,
// trailers and RST_STREAM of that stream, in order).
type op struct {
	kind     opKind
	end      bool   // END_STREAM (data, headers); ACK (ping); header table size present (settings ack)
	partial  bool   // part of data is already in a writer batch: on discard, buf is left to the GC, not pooled
	streamID uint32 // stream; last stream id for GOAWAY
	val      uint32 // window increment, error code, or header table size
	fields   []hpack.HeaderField
	buf      *[]byte  // pooled buffer backing data
	data     []byte   // payload still to be written
	src      *hstream // stream the data was received on; credited once written
	ping     [8]byte
}

// credit is flow-control window to give back to a peer: n bytes received on
// st (or only on the connection c when st is nil) have left meshd.
type credit struct {
	c  *conn
	st *hstream
	n  int64
}

// hstream is one stream on one connection. A proxied call has two: one on
// the client connection, one on the backend connection. All fields after id
// are guarded by c.mu.
type hstream struct {
	c    *conn
	call *call
	id   uint32 // 0 until an upstream stream's HEADERS are handed to the writer

	// These four sit in id's padding, which keeps hstream (two per call)
	// in the 384-byte size class.
	inActive    bool // in c.active
	finalQueued bool // END_STREAM or RST_STREAM queued: no more ops accepted
	sendDone    bool // END_STREAM or RST_STREAM handed to the writer
	recvDone    bool // peer's END_STREAM or RST_STREAM received, or we reset the stream

	q    []op // pending ops; q[qh:] are live
	qh   int
	qbuf [3]op // initial storage for q: HEADERS, DATA, trailers of a unary call

	outWin    int64 // peer's window for our DATA on this stream
	inWin     int64 // window granted to the peer and not yet consumed
	inUnacked int64 // bytes forwarded but not yet returned with WINDOW_UPDATE
	removed   bool

	gotHeaders  bool // a HEADERS frame was received on the stream
	respStarted bool // client side: response HEADERS or DATA queued to the client

	// Client side: how the client closed its half of the stream, which
	// decides the answer to frames that follow (RFC 9113 §5.1; closed.go).
	endRecv bool // the client's END_STREAM was received
	rstRecv bool // the client's RST_STREAM was received

	// The message's content-length (RFC 9113 §8.1.1), when it has one:
	// lenLeft is what it declared minus the DATA received so far. Used only
	// by the reader of the connection the message comes from.
	hasLen  bool
	lenLeft int64

	// respSent follows the message boundaries of the response DATA handed
	// to the writer on a client stream: what the client will have received
	// whatever happens to the DATA still queued. call.answerClient reads it
	// to tell whether ending the stream with a status would cut a message
	// in two.
	respSent msgTracker
}

func (st *hstream) qlen() int { return len(st.q) - st.qh }

func (st *hstream) head() *op { return &st.q[st.qh] }

func (st *hstream) headSendable() bool {
	o := &st.q[st.qh]
	return o.kind != opData || len(o.data) == 0 || st.outWin > 0
}

func (st *hstream) popHead() {
	st.q[st.qh] = op{}
	st.qh++
	if st.qh == len(st.q) {
		st.q = st.q[:0]
		st.qh = 0
	}
}

func (st *hstream) appendOp(o op) {
	if st.qh > 0 && len(st.q) == cap(st.q) {
		n := copy(st.q, st.q[st.qh:])
		clear(st.q[n:])
		st.q = st.q[:n]
		st.qh = 0
	}
	st.q = append(st.q, o)
}

// streamRing is a FIFO of streams with sendable ops.
type streamRing struct {
	buf        []*hstream
	head, size int
}

func (r *streamRing) len() int { return r.size }

func (r *streamRing) push(st *hstream) {
	if r.size == len(r.buf) {
		nb := make([]*hstream, max(8, 2*len(r.buf)))
		for i := 0; i < r.size; i++ {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = st
	r.size++
}

func (r *streamRing) pop() *hstream {
	st := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return st
}

// connError is a connection error: the connection is closed with GOAWAY(code).
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return "engine: connection error " + e.code.String() + ": " + e.reason
}

// conn is the state shared by client-facing and backend connections.
type conn struct {
	sh   *shared
	nc   net.Conn
	isUp bool // backend connection (meshd is the HTTP/2 client)

	src io.Reader // the socket: a rawsock.Reader over raw when its Read is the socket's
	br  *bufio.Reader
	rfr *http2.Framer // reader goroutine only
	fl  flusher       // reader goroutine only
	raw syscall.RawConn

	// Owned by the holder of the write token (conn.writing).
	wfr   *http2.Framer
	henc  *hpack.Encoder
	hbuf  bytes.Buffer // HPACK output
	out   outBuf       // encoded frames not yet written to the socket
	nbFn  func(uintptr) bool
	nbBuf []byte
	nbN   int
	nbErr error
	batch []op
	cs    []credit

	readerDone atomic.Bool
	closedFlag atomic.Bool // mirrors closed for lock-free checks on the read path

	mu            sync.Mutex
	cond          sync.Cond
	writerWaiting bool // the writer goroutine waits on cond
	writing       bool // the write token is held
	needWrite     bool // ops were queued since the token holder last collected
	closed        bool // no new ops are accepted; the writer writes ctrl and exits
	graceful      bool // closing without error: half-close and wait for the peer's EOF
	closeErr      error
	ctrl          []op
	active        streamRing
	streams       map[uint32]*hstream
	numStreams    int // server: streams in the table; backend: streams reserved on this conn
	draining      bool
	idleSince     time.Time

	queued    int64 // DATA payload bytes in this connection's stream queues
	outWin    int64 // peer's connection window for our DATA
	inWin     int64 // connection window granted to the peer
	inUnacked int64

	streamWUThresh int64
	connWUThresh   int64
	ourInitWin     int64 // window we grant new streams

	peerMaxFrame      uint32
	peerInitWin       int64
	peerMaxStreams    uint32
	peerMaxHeaderList uint32

	maxPeerStreamID uint32 // server: highest client stream id seen
	nextStreamID    uint32 // backend: next stream id to assign
	goAwayLast      uint32 // backend: last stream id from the peer's GOAWAY
	gotGoAway       bool

	// Server: how the last client streams closed, and the streams whose
	// response ended while the client was still sending, waiting for a
	// PING round trip before meshd resets them (closed.go).
	recent     closedStreams
	endWait    []*hstream // response END_STREAM written, no end PING after it yet
	endPinged  []*hstream // covered by the end PING in flight
	endPingOut bool
}

// init sets up buffers and framers; sh.cfg must be resolved.
func (c *conn) init(sh *shared, nc net.Conn, isUp bool) {
	cfg := &sh.cfg
	c.sh = sh
	c.nc = nc
	c.isUp = isUp
	c.src = nc
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.nbFn = c.nbWrite
			// Reads and writes skip entersyscall (package rawsock says
			// why); a connection that replays sniffed bytes is still read
			// through its Read.
			if rawsock.ReadsSocket(nc) {
				c.src = rawsock.NewReader(raw)
			}
		}
	}
	c.br = bufio.NewReaderSize(c.src, bufioSize)
	c.rfr = http2.NewFramer(nil, c.br)
	c.rfr.SetReuseFrames()
	c.rfr.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.rfr.MaxHeaderListSize = headerDecodeLimit(cfg.MaxHeaderListSize)
	c.wfr = http2.NewFramer(&c.out, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.cond.L = &c.mu
	c.streams = make(map[uint32]*hstream)
	c.outWin = 65535
	c.inWin = int64(cfg.ConnWindowSize)
	c.ourInitWin = int64(cfg.InitialWindowSize)
	c.streamWUThresh = max(int64(cfg.InitialWindowSize)/4, 1)
	c.connWUThresh = max(int64(cfg.ConnWindowSize)/4, 1)
	c.peerMaxFrame = 16384
	c.peerInitWin = 65535
	c.peerMaxStreams = 100 // RFC 9113 recommends at least 100; replaced by the peer's SETTINGS
	c.peerMaxHeaderList = 0
	c.idleSince = time.Now()
}

// ourSettings are the SETTINGS meshd sends on every connection.
func (c *conn) ourSettings() []http2.Setting {
	cfg := &c.sh.cfg
	listSize := cfg.MaxHeaderListSize
	if c.isUp {
		listSize = c.rfr.MaxHeaderListSize // headerDecodeLimit
	}
	s := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: cfg.InitialWindowSize},
		{ID: http2.SettingMaxFrameSize, Val: cfg.MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: listSize},
	}
	if c.isUp {
		s = append(s, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		s = append(s, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: cfg.MaxConcurrentStreams})
	}
	return s
}

// writePreamble writes meshd's SETTINGS and the connection window increase.
// Only called before the writer goroutine starts.
func (c *conn) writePreamble() error {
	if c.isUp {
		c.out = append(c.out, http2.ClientPreface...)
	}
	if err := c.wfr.WriteSettings(c.ourSettings()...); err != nil {
		return err
	}
	if inc := int64(c.sh.cfg.ConnWindowSize) - 65535; inc > 0 {
		if err := c.wfr.WriteWindowUpdate(0, uint32(inc)); err != nil {
			return err
		}
	}
	return c.flushBlocking()
}

// outBuf collects encoded frames; the write Framer writes into it.
type outBuf []byte

func (b *outBuf) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// flusher is owned by one reader goroutine. It records the connections the
// reader queued frames on while their writer goroutine was idle; the reader
// writes those frames itself (flush) before it blocks on its next read, so
// one syscall carries everything a burst of input produced and no
// goroutine has to be woken.
type flusher struct {
	dirty []*conn
}

func (f *flusher) add(c *conn) {
	for _, d := range f.dirty {
		if d == c {
			return
		}
	}
	f.dirty = append(f.dirty, c)
}

func (f *flusher) flush() {
	for i, c := range f.dirty {
		c.flushInline()
		f.dirty[i] = nil
	}
	f.dirty = f.dirty[:0]
}

// flushBeforeBlock is called by the reader when it is about to wait for
// input. It first lets the goroutines that are ready run
// (runtime.Gosched): under load several connections' readers wake
// together, and the frames they queue on one backend or client connection
// are then written by whichever flushes last, in one write, instead of one
// write each (the others find nothing left to write). With nothing else
// ready, Gosched returns at once. Measured against flushing at once (one
// interleaved meshbench -baseline run): CPU per call 0.88x at full load,
// throughput 1.06x, no change at 500 and 2,000 calls/s.
func (f *flusher) flushBeforeBlock() {
	runtime.Gosched()
	f.flush()
}

// wakeLocked records that ops are queued. If nobody is writing, either the
// caller's flusher takes note (the calling reader will write them) or the
// writer goroutine is woken.
func (c *conn) wakeLocked(fl *flusher) {
	c.needWrite = true
	if c.writing || !c.writerWaiting {
		return // the token holder, or the awake writer, will collect them
	}
	if fl != nil && c.raw != nil {
		fl.add(c)
		return
	}
	c.writerWaiting = false
	c.cond.Signal()
}

// pushCtrlLocked queues a control frame. It reports false when the peer
// lets control frames pile up, which the caller treats as abuse.
func (c *conn) pushCtrlLocked(o op, fl *flusher) bool {
	if c.closed {
		return true
	}
	if len(c.ctrl) >= maxQueuedCtrl {
		return false
	}
	c.ctrl = append(c.ctrl, o)
	c.wakeLocked(fl)
	return true
}

// pushLocked appends o to st's queue. It reports false, leaving o to the
// caller (who must release its buffer and return its credit), when the stream
// no longer accepts ops.
func (c *conn) pushLocked(st *hstream, o op, fl *flusher) bool {
	if c.closed || st.finalQueued || st.removed {
		return false
	}
	if o.end || o.kind == opRST {
		st.finalQueued = true
	}
	if o.kind == opData {
		c.queued += int64(len(o.data))
	}
	st.appendOp(o)
	c.activateLocked(st, fl)
	return true
}

// pushDataLocked queues a copy of the DATA payload p, received on src, for
// st. It reports false, leaving the credit for p to the caller, when the
// stream no longer accepts ops.
func (c *conn) pushDataLocked(st *hstream, p []byte, end bool, src *hstream, fl *flusher) bool {
	if c.closed || st.finalQueued || st.removed {
		return false
	}
	var t *op
	if st.qlen() > 0 {
		t = &st.q[len(st.q)-1]
	}
	o, packed := c.sh.appendData(t, p, end, src)
	if packed {
		c.queued += int64(len(p))
		if end {
			st.finalQueued = true
		}
		c.activateLocked(st, fl)
		return true
	}
	c.queued += int64(len(p) - len(o.data)) // what went into t; pushLocked counts o
	return c.pushLocked(st, o, fl)
}

// appendData adds the DATA payload p, received on src, after t, the last
// op queued for the same destination (nil if none). When t is DATA from
// src, p fills the spare room of t's buffer first, and a new buffer for
// the rest is twice the size of t's (up to MaxFrameSize): while a peer
// reads slower than meshd receives, its backlog then takes about its own
// size in memory instead of one buffer per frame (a 1 KiB gRPC message in a
// max-size buffer costs 16 times its size). Frame boundaries carry no
// meaning in HTTP/2, so nothing else changes.
//
// It reports packed when all of p (and end) went into t; otherwise the
// caller queues o, which holds the rest of p. The writer may be writing
// the front of t.data meanwhile (t.partial), never the room behind it.
func (sh *shared) appendData(t *op, p []byte, end bool, src *hstream) (o op, packed bool) {
	size := len(p)
	if t != nil && len(p) > 0 && t.kind == opData && t.buf != nil && t.src == src && !t.end {
		k := len(t.data)
		n := min(cap(t.data)-k, len(p))
		t.data = t.data[:k+n]
		copy(t.data[k:], p[:n])
		if p = p[n:]; len(p) == 0 {
			t.end = end
			return op{}, true
		}
		size = max(len(p), min(2*len(*t.buf), int(sh.cfg.MaxFrameSize)))
	}
	o = op{kind: opData, end: end, src: src}
	if len(p) > 0 {
		b := sh.getBuf(size)
		o.buf = b
		o.data = (*b)[:copy(*b, p)]
	}
	return o, false
}

// activateLocked puts st on the writer's round-robin list if its head op can
// be written.
func (c *conn) activateLocked(st *hstream, fl *flusher) {
	if !st.inActive && st.qlen() > 0 && st.headSendable() {
		st.inActive = true
		c.active.push(st)
		c.wakeLocked(fl)
	}
}

// resetLocked discards st's pending ops and queues RST_STREAM(code), unless
// the stream is already closed on the wire or was never opened (an upstream
// stream whose HEADERS were not written yet is simply dropped).
func (c *conn) resetLocked(st *hstream, code http2.ErrCode, cs *[]credit, fl *flusher) {
	if st.removed {
		return
	}
	c.discardLocked(st, cs)
	st.finalQueued = true
	if st.id == 0 {
		st.sendDone, st.recvDone = true, true
		c.removeStreamLocked(st)
		return
	}
	if st.sendDone && st.recvDone {
		c.removeStreamLocked(st)
		return
	}
	if c.closed {
		return
	}
	st.appendOp(op{kind: opRST, val: uint32(code)})
	c.activateLocked(st, fl)
}

// discardLocked drops st's pending ops, releasing buffers and collecting the
// credit owed for dropped DATA.
func (c *conn) discardLocked(st *hstream, cs *[]credit) {
	for i := st.qh; i < len(st.q); i++ {
		o := &st.q[i]
		if o.kind == opData && len(o.data) > 0 {
			c.queued -= int64(len(o.data))
			if o.src != nil {
				*cs = append(*cs, credit{c: o.src.c, st: o.src, n: int64(len(o.data))})
			}
		}
		if o.buf != nil && !o.partial {
			c.sh.putBuf(o.buf)
		}
		st.q[i] = op{}
	}
	st.q = st.q[:0]
	st.qh = 0
}

// discardDataLocked drops st's pending DATA but keeps HEADERS already
// queued: a response whose headers are queued must get trailers, not a
// second header block, and the headers must go first.
func (c *conn) discardDataLocked(st *hstream, cs *[]credit) {
	kept := st.q[:0]
	for i := st.qh; i < len(st.q); i++ {
		o := st.q[i]
		st.q[i] = op{}
		if o.kind == opHeaders {
			kept = append(kept, o)
			continue
		}
		if o.kind == opData {
			c.queued -= int64(len(o.data))
		}
		c.sh.dropOp(&o, cs)
	}
	clear(st.q[len(kept):])
	st.q = kept
	st.qh = 0
}

// removeStreamLocked forgets a stream whose both directions are finished.
func (c *conn) removeStreamLocked(st *hstream) {
	if st.removed {
		return
	}
	st.removed = true
	if st.id != 0 {
		delete(c.streams, st.id)
		if !c.isUp {
			c.recent.add(st.id, closedHow(st.endRecv, st.rstRecv))
		}
	}
	c.numStreams--
	if !c.isUp {
		c.sh.stats.ActiveStreams.Add(-1)
	} else {
		c.sh.stats.UpstreamStreams.Add(-1)
	}
	if c.numStreams == 0 {
		c.idleSince = time.Now()
		if c.draining {
			c.closeGracefullyLocked()
		}
	}
}

// closeGracefullyLocked closes a drained connection: meshd's last frames are
// flushed, then the connection is half-closed and the peer's EOF awaited.
func (c *conn) closeGracefullyLocked() {
	if c.closed {
		return
	}
	if c.isUp {
		c.pushCtrlLocked(op{kind: opGoAway, streamID: 0, val: uint32(http2.ErrCodeNo)}, nil)
	}
	c.graceful = true
	c.shutdownLocked(nil)
}

// goAwayLocked closes the connection because of a connection error.
func (c *conn) goAwayLocked(code http2.ErrCode, reason string) {
	if c.closed {
		return
	}
	last := uint32(0)
	if !c.isUp {
		last = c.maxPeerStreamID
	}
	o := op{kind: opGoAway, streamID: last, val: uint32(code)}
	if reason != "" {
		o.data = []byte(reason)
	}
	c.pushCtrlLocked(o, nil)
	if code != http2.ErrCodeNo {
		c.sh.stats.ProtocolErrors.Add(1)
		c.sh.log.Debug("engine: closing connection", "remote", c.nc.RemoteAddr(), "upstream", c.isUp, "code", code, "reason", reason)
	}
	c.shutdownLocked(connError{code: code, reason: reason})
}

// shutdownLocked stops the connection from accepting ops. The writer writes
// the remaining control frames (a GOAWAY) and exits; the reader exits on its
// next read error and aborts the streams left.
func (c *conn) shutdownLocked(err error) {
	if c.closed {
		return
	}
	c.closed = true
	c.closedFlag.Store(true)
	c.closeErr = err
	// Bound the final flush: a peer that does not read must not keep the
	// writer (and so the connection's owner) waiting.
	_ = c.nc.SetWriteDeadline(time.Now().Add(closeTimeout))
	c.cond.Broadcast()
}

// hardClose closes the connection at once.
func (c *conn) hardClose(err error) {
	c.mu.Lock()
	c.shutdownLocked(err)
	c.graceful = false
	c.mu.Unlock()
	_ = c.nc.Close()
}

// teardown runs when the reader exits: it marks every stream closed, drops
// their queues and returns the streams so the owner can end their calls.
func (c *conn) teardown(err error) []*hstream {
	var cs []credit
	c.mu.Lock()
	c.shutdownLocked(err)
	streams := make([]*hstream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	for i := 0; i < c.active.len(); i++ {
		st := c.active.buf[(c.active.head+i)%len(c.active.buf)]
		if st.id == 0 && !st.removed {
			streams = append(streams, st)
		}
	}
	for _, st := range streams {
		c.discardLocked(st, &cs)
		st.finalQueued, st.sendDone, st.recvDone = true, true, true
		c.removeStreamLocked(st)
	}
	c.mu.Unlock()
	applyCredits(cs)
	return streams
}

// addCreditLocked returns n forwarded bytes to the peer's windows, sending
// WINDOW_UPDATE once a quarter of a window has accumulated (as grpc-go and
// x/net do) to keep the frame count low.
func (c *conn) addCreditLocked(st *hstream, n int64) {
	if c.closed || n <= 0 {
		return
	}
	c.inUnacked += n
	if c.inUnacked >= c.connWUThresh {
		c.pushCtrlLocked(op{kind: opWindowUpdate, val: uint32(c.inUnacked)}, nil)
		c.inWin += c.inUnacked
		c.inUnacked = 0
	}
	if st != nil && !st.recvDone && !st.removed {
		st.inUnacked += n
		if st.inUnacked >= c.streamWUThresh {
			c.pushCtrlLocked(op{kind: opWindowUpdate, streamID: st.id, val: uint32(st.inUnacked)}, nil)
			st.inWin += st.inUnacked
			st.inUnacked = 0
		}
	}
}

// applyCredits returns credits, locking each connection once per run of
// consecutive credits for it.
func applyCredits(cs []credit) {
	for i := 0; i < len(cs); {
		c := cs[i].c
		c.mu.Lock()
		for ; i < len(cs) && cs[i].c == c; i++ {
			c.addCreditLocked(cs[i].st, cs[i].n)
		}
		c.mu.Unlock()
	}
}

// consumeConnLocked charges a received DATA frame of flen bytes to the
// connection window; callers charge the stream window themselves.
func (c *conn) consumeConnLocked(flen int64) error {
	if flen > c.inWin {
		return connError{http2.ErrCodeFlowControl, "connection flow-control window exceeded"}
	}
	c.inWin -= flen
	return nil
}

// onWindowUpdateLocked applies a WINDOW_UPDATE from the peer. It returns the
// stream to reset when a stream window overflows.
func (c *conn) onWindowUpdateLocked(f *http2.WindowUpdateFrame, fl *flusher) (*hstream, error) {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.outWin += inc
		if c.outWin > maxWindow {
			return nil, connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		if c.outWin > 0 && c.active.len() > 0 {
			c.wakeLocked(fl)
		}
		return nil, nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.isIdleStreamLocked(f.StreamID) {
			return nil, connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil, nil
	}
	st.outWin += inc
	if st.outWin > maxWindow {
		return st, nil
	}
	c.activateLocked(st, fl)
	return nil, nil
}

// isIdleStreamLocked reports whether id names a stream that was never
// opened, on which any frame but HEADERS/PRIORITY is a connection error.
func (c *conn) isIdleStreamLocked(id uint32) bool {
	if c.isUp {
		return id%2 == 1 && id >= c.nextStreamID
	}
	return id%2 == 1 && id > c.maxPeerStreamID
}

// applySettingsLocked applies the peer's SETTINGS and queues the ACK.
func (c *conn) applySettingsLocked(f *http2.SettingsFrame, fl *flusher) error {
	ack := op{kind: opSettingsAck}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), "invalid setting " + s.String()}
			}
			return connError{http2.ErrCodeProtocol, "invalid setting " + s.String()}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.outWin += delta
				if st.outWin > maxWindow {
					return connError{http2.ErrCodeFlowControl, "stream window overflow after SETTINGS"}
				}
				c.activateLocked(st, fl)
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingHeaderTableSize:
			ack.end, ack.val = true, s.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaderList = s.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !c.pushCtrlLocked(ack, fl) {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many queued control frames"}
	}
	return nil
}

// collectLocked moves the next writable frames into b: all control frames
// first, then DATA/HEADERS/RST_STREAM from active streams in round-robin
// order, as far as the peer's windows allow.
func (c *conn) collectLocked(b []op) []op {
	if len(c.ctrl) > 0 {
		b = append(b, c.ctrl...)
		clear(c.ctrl)
		c.ctrl = c.ctrl[:0]
	}
	if c.closed {
		return b
	}
	budget := int64(maxBatchBytes)
	// The bound n guarantees termination: when the connection window is
	// spent, only HEADERS/RST heads can progress, and the rotation goes on
	// so that they do.
	for n := c.active.len(); n > 0 && len(b) < maxBatchOps && budget > 0; n-- {
		st := c.active.pop()
		st.inActive = false
		b = c.collectStreamLocked(st, b, &budget)
		if st.sendDone && st.recvDone && st.qlen() == 0 {
			c.removeStreamLocked(st)
			continue
		}
		if st.qlen() > 0 && st.headSendable() && !st.removed {
			st.inActive = true
			c.active.push(st)
		}
	}
	if len(c.endWait) > 0 && !c.endPingOut {
		// After the responses it is to confirm (closed.go).
		b = append(b, c.endPingLocked())
	}
	return b
}

// collectStreamLocked moves st's writable ops into b: one round of the
// writer's round robin, at most streamQuantum bytes of DATA, which are
// also taken from *budget.
func (c *conn) collectStreamLocked(st *hstream, b []op, budget *int64) []op {
	maxFrame := int64(c.peerMaxFrame)
	quantum := int64(streamQuantum)
	for st.qlen() > 0 && len(b) < maxBatchOps && quantum > 0 {
		o := st.head()
		if o.kind == opData && len(o.data) > 0 {
			w := min(int64(len(o.data)), st.outWin, c.outWin, maxFrame, quantum)
			if w <= 0 {
				break
			}
			b = append(b, c.takeDataLocked(st, o, w))
			*budget -= w
			quantum -= w
			continue
		}
		if o.kind == opRST && st.sendDone && st.recvDone {
			// Closed on the wire already (END_STREAM both ways): a
			// RST_STREAM now would be a frame on a closed stream.
			st.popHead()
			continue
		}
		b = append(b, c.takeFrameLocked(st))
	}
	return b
}

// takeDataLocked takes the first w bytes of o, the DATA op at the head of
// st, as a frame to write, and charges them to the flow-control windows.
func (c *conn) takeDataLocked(st *hstream, o *op, w int64) op {
	chunk := op{kind: opData, streamID: st.id, data: o.data[:w], src: o.src}
	if w == int64(len(o.data)) {
		// The last chunk owns the buffer: earlier chunks of it were
		// written before, by this same goroutine, so it can go back to the
		// pool after this write.
		chunk.buf, chunk.end = o.buf, o.end
		st.popHead()
	} else {
		o.data = o.data[w:]
		o.partial = true
	}
	if !c.isUp {
		st.respSent.advance(chunk.data)
	}
	st.outWin -= w
	c.outWin -= w
	c.queued -= w
	if chunk.end {
		st.sendDone = true
		c.endSentLocked(st)
	}
	return chunk
}

// takeFrameLocked takes the HEADERS or RST_STREAM op at the head of st as
// a frame to write, giving an upstream stream its id with its first
// HEADERS.
func (c *conn) takeFrameLocked(st *hstream) op {
	if st.id == 0 {
		// First HEADERS of an upstream stream: ids are assigned in the
		// order HEADERS are written, so they always increase.
		st.id = c.nextStreamID
		c.nextStreamID += 2
		st.outWin = c.peerInitWin
		c.streams[st.id] = st
	}
	x := *st.head()
	x.streamID = st.id
	st.popHead()
	switch {
	case x.kind == opRST:
		st.sendDone, st.recvDone = true, true
	case x.end:
		st.sendDone = true
		c.endSentLocked(st)
	}
	return x
}

// writeLoop is the connection's writer goroutine. Whenever ops are queued
// and nobody holds the write token, it takes the token, writes batches of
// frames until the queues are empty, then writes the output to the socket,
// so frames queued together leave in one syscall.
func (c *conn) writeLoop() {
	var werr error
	c.mu.Lock()
	for {
		for c.writing || !(c.needWrite || len(c.out) > 0 || c.closed) {
			c.writerWaiting = true
			c.cond.Wait()
		}
		c.writerWaiting = false
		c.writing = true
		for {
			c.needWrite = false
			c.batch = c.collectLocked(c.batch[:0])
			if len(c.batch) == 0 {
				break
			}
			maxFrame := int(c.peerMaxFrame)
			c.mu.Unlock()
			werr = c.encodeBatch(maxFrame, true)
			applyCredits(c.cs)
			clear(c.cs)
			c.cs = c.cs[:0]
			c.mu.Lock()
			if werr != nil {
				break
			}
		}
		if werr == nil && len(c.out) > 0 {
			c.mu.Unlock()
			werr = c.flushBlocking()
			c.mu.Lock()
		}
		c.writing = false
		if werr != nil {
			c.shutdownLocked(werr)
			c.graceful = false
			break
		}
		if c.closed && len(c.ctrl) == 0 {
			// The control frames queued at close (a GOAWAY) are written:
			// those queued while this writer was writing, unlocked, are
			// collected by another round (no more are queued once closed).
			break
		}
	}
	graceful := c.graceful
	c.mu.Unlock()
	if graceful && !c.readerDone.Load() {
		// Half-close and let the reader see the peer's EOF: closing with
		// unread data would reset the connection and could destroy the
		// frames just written.
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			_ = c.nc.SetReadDeadline(time.Now().Add(closeTimeout))
			return
		}
	}
	_ = c.nc.Close()
}

// flushInline is called by a reader goroutine (through its flusher) for a
// connection it queued frames on. If the connection's writer goroutine is
// idle, the reader writes one batch itself with a non-blocking write and
// leaves whatever the socket did not take to the writer goroutine.
func (c *conn) flushInline() {
	c.mu.Lock()
	if c.writing || c.closed || !c.needWrite || !c.writerWaiting {
		// Someone else writes, or the writer goroutine is awake anyway.
		c.mu.Unlock()
		return
	}
	c.writing = true
	c.needWrite = false
	c.batch = c.collectLocked(c.batch[:0])
	if c.active.len() > 0 {
		// The batch was full (maxBatchOps, maxBatchBytes): the writer
		// goroutine writes the rest. Nothing else would wake it: pushes to
		// a stream already on the active list do not.
		c.needWrite = true
	}
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	err := c.encodeBatch(maxFrame, false)
	if err == nil && len(c.out) > 0 {
		var n int
		n, err = c.writeNonBlocking(c.out)
		rest := copy(c.out, c.out[n:])
		c.out = c.out[:rest]
	}
	applyCredits(c.cs)
	clear(c.cs)
	c.cs = c.cs[:0]
	c.mu.Lock()
	c.writing = false
	if err != nil {
		c.shutdownLocked(err)
		c.graceful = false
	}
	if (len(c.out) > 0 || c.needWrite || c.closed) && c.writerWaiting {
		c.writerWaiting = false
		c.cond.Signal()
	}
	c.mu.Unlock()
}

// writeNonBlocking writes as much of b as the socket takes without
// waiting. Token holder only.
func (c *conn) writeNonBlocking(b []byte) (int, error) {
	c.nbBuf = b
	err := c.raw.Write(c.nbFn)
	n, werr := c.nbN, c.nbErr
	c.nbBuf, c.nbErr = nil, nil
	if n < 0 {
		n = 0
	}
	if err != nil {
		return n, err
	}
	if werr == syscall.EAGAIN {
		werr = nil
	}
	return n, werr
}

// nbWrite is the RawConn.Write callback of writeNonBlocking; bound once
// (c.nbFn) so a write allocates nothing. It never asks to wait.
func (c *conn) nbWrite(fd uintptr) bool {
	n, errno := rawsock.Write(fd, c.nbBuf)
	c.nbN = n
	if errno != 0 {
		c.nbErr = errno
	}
	return true
}

// appendDataHeader appends the 9-byte header of a DATA frame (RFC 9113
// §4.1, §6.1) to the output. DATA is the one frame written without the
// Framer: its payload is then copied once, straight from the pooled
// buffers into the output, instead of three times. Token holder only.
func (c *conn) appendDataHeader(streamID uint32, length int, end bool) {
	var flags http2.Flags
	if end {
		flags = http2.FlagDataEndStream
	}
	c.out = append(c.out, byte(length>>16), byte(length>>8), byte(length), byte(http2.FrameData), byte(flags),
		byte(streamID>>24), byte(streamID>>16), byte(streamID>>8), byte(streamID))
}

// flushBlocking writes all pending output. Token holder only.
func (c *conn) flushBlocking() error {
	_, err := c.nc.Write(c.out)
	if cap(c.out) > 1<<20 {
		c.out = nil // do not pin a buffer grown by one huge batch
	} else {
		c.out = c.out[:0]
	}
	return err
}

// encodeBatch encodes c.batch into c.out, releasing buffers and recording
// credit in c.cs. With blocking set it writes to the socket whenever the
// output grows past bufioSize. Token holder only.
func (c *conn) encodeBatch(maxFrame int, blocking bool) error {
	var werr error
	batch := c.batch
	for i := 0; i < len(batch); {
		o := &batch[i]
		j := i + 1
		if werr == nil {
			if o.kind == opData {
				// Coalesce consecutive DATA of one stream into one frame:
				// frame boundaries carry no meaning, and fewer frames means
				// less work for the receiver.
				total := len(o.data)
				for j < len(batch) && batch[j].kind == opData && batch[j].streamID == o.streamID &&
					!batch[j-1].end && total+len(batch[j].data) <= maxFrame {
					total += len(batch[j].data)
					j++
				}
				c.appendDataHeader(o.streamID, total, batch[j-1].end)
				for k := i; k < j; k++ {
					c.out = append(c.out, batch[k].data...)
				}
			} else {
				werr = c.writeOp(o, maxFrame)
			}
			if werr == nil && blocking && len(c.out) >= bufioSize {
				werr = c.flushBlocking()
			}
		}
		for k := i; k < j; k++ {
			o := &batch[k]
			if o.kind == opData && len(o.data) > 0 && o.src != nil {
				c.cs = append(c.cs, credit{c: o.src.c, st: o.src, n: int64(len(o.data))})
			}
			if o.buf != nil && !o.partial {
				c.sh.putBuf(o.buf)
			}
		}
		i = j
	}
	clear(batch)
	return werr
}

// frameBuffered reports whether a whole frame (a whole header block for
// HEADERS) is already buffered, so reading it will not block.
func (c *conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	h, _ := c.br.Peek(9)
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if http2.FrameType(h[3]) == http2.FrameHeaders && http2.Flags(h[4])&http2.FlagHeadersEndHeaders == 0 {
		return false // CONTINUATION frames follow and may not be here yet
	}
	return n >= 9+length
}

// writeOp writes one op. Only the writer goroutine calls it.
func (c *conn) writeOp(o *op, maxFrame int) error {
	switch o.kind {
	case opData:
		c.appendDataHeader(o.streamID, len(o.data), o.end)
		c.out = append(c.out, o.data...)
		return nil
	case opHeaders:
		return c.writeHeaders(o.streamID, o.fields, o.end, maxFrame)
	case opRST:
		return c.wfr.WriteRSTStream(o.streamID, http2.ErrCode(o.val))
	case opWindowUpdate:
		return c.wfr.WriteWindowUpdate(o.streamID, o.val)
	case opPing:
		return c.wfr.WritePing(o.end, o.ping)
	case opSettingsAck:
		if o.end {
			c.henc.SetMaxDynamicTableSizeLimit(o.val)
		}
		return c.wfr.WriteSettingsAck()
	case opGoAway:
		return c.wfr.WriteGoAway(o.streamID, http2.ErrCode(o.val), o.data)
	}
	return nil
}

// writeHeaders HPACK-encodes fields and writes them as HEADERS plus
// CONTINUATION frames. Encoding happens here, on the writer goroutine, so the
// encoder's dynamic table evolves in exactly the order blocks hit the wire.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool, maxFrame int) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		chunk := block
		if len(chunk) > maxFrame {
			chunk = chunk[:maxFrame]
		}
		block = block[len(chunk):]
		var err error
		if first {
			err = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = c.wfr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readErrorToClose converts a read error into the GOAWAY to send, if any.
func (c *conn) readErrorToClose(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ce http2.ConnectionError
	var cerr connError
	switch {
	case errors.As(err, &cerr):
		c.goAwayLocked(cerr.code, cerr.reason)
	case errors.As(err, &ce):
		reason := ""
		if d := c.rfr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		c.goAwayLocked(http2.ErrCode(ce), reason)
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAwayLocked(http2.ErrCodeFrameSize, "frame too large")
	default:
		if !c.closed && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			c.sh.log.Debug("engine: read error", "remote", c.nc.RemoteAddr(), "upstream", c.isUp, "err", err)
		}
		c.shutdownLocked(err)
		c.graceful = false
	}
}

// finishRead is called by the reader goroutine on exit. It closes the socket
// unless the writer still has a GOAWAY to flush, and tears down the streams.
func (c *conn) finishRead(err error) []*hstream {
	c.readerDone.Store(true)
	streams := c.teardown(err)
	c.mu.Lock()
	// The writer closes the socket after its final flush; a reader that saw
	// an I/O error closes it now so a blocked writer wakes up.
	var cerr connError
	if !errors.As(c.closeErr, &cerr) {
		c.mu.Unlock()
		_ = c.nc.Close()
	} else {
		c.mu.Unlock()
	}
	return streams
}
