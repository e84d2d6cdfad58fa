package h2guard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Reason says why a connection was closed for misbehaving.
type Reason uint8

// The reasons. The guard closes connections for the flood and protocol
// reasons; NotHTTP2 and HandshakeTimeout are closed by the server and only
// recognized and counted here.
const (
	RapidReset        Reason = iota // streams reset by the client as soon as opened
	EmptyFrames                     // DATA/HEADERS/CONTINUATION without payload, in a row
	SettingsFlood                   // non-ACK SETTINGS beyond the token bucket
	PingFlood                       // non-ACK PING beyond the token bucket
	WindowUpdateFlood               // WINDOW_UPDATE out of proportion to the traffic
	ExtraFrames                     // PRIORITY and unknown-type frames beyond the per-stream allowance
	ProtocolError                   // the first frame after the preface is not SETTINGS
	FrameTooLarge                   // a frame over the server's SETTINGS_MAX_FRAME_SIZE
	HeadersTooLarge                 // a header block over the header list size limit, encoded
	NotHTTP2                        // the client preface is wrong (garbage, HTTP/1.x)
	HandshakeTimeout                // the preface and first SETTINGS did not arrive in time
	NumReasons                      // the number of reasons
)

var reasonNames = [NumReasons]string{"rapid_reset", "empty_frames", "settings_flood", "ping_flood", "window_update_flood", "extra_frames", "protocol_error", "frame_too_large", "headers_too_large", "not_http2", "handshake_timeout"}

// String is the reason's metric label value.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// NumFrameTypes is the size of Stats.FramesReceived: the ten frame types of
// RFC 9113 (DATA 0x0 to CONTINUATION 0x9) and a last slot for every other
// type.
const NumFrameTypes = 11

var frameNames = [NumFrameTypes]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION", "UNKNOWN"}

// FrameTypeName is the name of Stats.FramesReceived[i].
func FrameTypeName(i int) string { return frameNames[i] }

// NumErrCodes is the size of Stats.GoAwaysSent and Stats.ResetsSent: the
// error codes of RFC 9113 (NO_ERROR 0x0 to HTTP_1_1_REQUIRED 0xd) and a
// last slot for every other code.
const NumErrCodes = 15

var codeNames = [NumErrCodes]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED", "UNKNOWN"}

// ErrCodeName is the name of the error code counted at index i of
// Stats.GoAwaysSent and Stats.ResetsSent.
func ErrCodeName(i int) string { return codeNames[i] }

// HTTP/2 error codes the guard sends.
const (
	codeProtocol  = 0x1
	codeFrameSize = 0x6
	codeCalm      = 0xb
)

// Limits are the thresholds past which a connection is closed. A zero
// field takes its default.
type Limits struct {
	// MaxFrameSize is the SETTINGS_MAX_FRAME_SIZE the server advertises;
	// a larger frame is a connection error. Default 16384 (what grpc-go
	// and h2proxy advertise).
	MaxFrameSize uint32
	// MaxHeaderListSize is the server's header list size limit
	// (SETTINGS_MAX_HEADER_LIST_SIZE). A header block whose encoded size
	// alone is over it (HEADERS and CONTINUATION payloads, padding
	// included) closes the connection: HPACK never encodes a field in more
	// bytes than it counts for in the list, so such a block is over the
	// limit however it decodes, and the server would otherwise read and
	// decode all of it or close the connection without a GOAWAY. Default
	// 0: no check.
	MaxHeaderListSize uint32
	// PrematureResetAge: a stream the client resets within this long of
	// opening it counts as reset prematurely. Default 1s.
	PrematureResetAge time.Duration
	// MinResetStreams is how many streams a connection must have opened
	// before its premature resets are judged; then at least half of its
	// streams reset prematurely close it. Default 100 (Envoy uses 500):
	// every stream reaches a backend before its reset does, so each one
	// an attacker gets through costs a backend too, and an attacker that
	// reconnects gets this many per connection. Measured at 100
	// connections a second, 500 cost meshd four times the CPU of the
	// other floods; 100 costs about the same.
	MinResetStreams int
	// MaxConsecutiveEmptyFrames is how many DATA, HEADERS or CONTINUATION
	// frames with no payload and no END_STREAM may follow each other.
	// Default 10.
	MaxConsecutiveEmptyFrames int
	// SettingsBurst and SettingsPerSecond are the token bucket for non-ACK
	// SETTINGS frames. Defaults 100 and 10: a client sends a handful in a
	// connection's life (grpc-go: one, plus one per flow-control window
	// increase).
	SettingsBurst     int
	SettingsPerSecond float64
	// PingBurst, PingsPerSecond and PingsPerDataFrame are the token bucket
	// for non-ACK PING frames: it refills with time (keepalive pings, which
	// the server's keepalive policy allows every 10s at most by default)
	// and with every DATA frame sent to the client (a grpc-go client sends
	// a BDP-estimation ping per burst of data it receives). Defaults 100, 1
	// and 2. The server sees a PING flood too (grpc-go sends GOAWAY
	// too_many_pings), but only after it has answered every PING already
	// sent, which the guard spares it.
	PingBurst         int
	PingsPerSecond    float64
	PingsPerDataFrame int
	// WindowUpdatesPerDataFrame is how many WINDOW_UPDATE frames a client
	// may send per DATA frame it received (plus 100, plus 2 per stream).
	// Default 10.
	WindowUpdatesPerDataFrame int
	// ExtraFramesPerStream is how many PRIORITY or unknown-type frames a
	// client may send per stream it opened (plus one stream's worth).
	// Default 100.
	ExtraFramesPerStream int
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if l.MaxFrameSize == 0 {
		l.MaxFrameSize = 16384
	}
	if l.PrematureResetAge <= 0 {
		l.PrematureResetAge = time.Second
	}
	def(&l.MinResetStreams, 100)
	def(&l.MaxConsecutiveEmptyFrames, 10)
	def(&l.SettingsBurst, 100)
	if l.SettingsPerSecond <= 0 {
		l.SettingsPerSecond = 10
	}
	def(&l.PingBurst, 100)
	if l.PingsPerSecond <= 0 {
		l.PingsPerSecond = 1
	}
	def(&l.PingsPerDataFrame, 2)
	def(&l.WindowUpdatesPerDataFrame, 10)
	def(&l.ExtraFramesPerStream, 100)
	return l
}

// Stats are a Guard's counters since it was created. The zero value is
// empty stats.
type Stats struct {
	// ConnsAccepted counts connections the guard was given; ConnsActive
	// those not closed yet.
	ConnsAccepted uint64
	ConnsActive   int64
	// ConnsRejected counts connections refused before reaching the guard
	// (a connection cap). The guard does not cap connections: the
	// listener's owner fills it in.
	ConnsRejected uint64
	// FramesReceived counts client frames by type (index: the frame type,
	// NumFrameTypes-1 for unknown types). Names: FrameTypeName.
	FramesReceived [NumFrameTypes]uint64
	// EmptyFramesReceived counts DATA, HEADERS and CONTINUATION frames with
	// no payload and no END_STREAM.
	EmptyFramesReceived uint64
	// GoAwaysSent and ResetsSent count the server's (and the guard's own)
	// GOAWAY and RST_STREAM frames by error code. Names: ErrCodeName.
	GoAwaysSent [NumErrCodes]uint64
	ResetsSent  [NumErrCodes]uint64
	// Closed counts connections closed for misbehaving, by Reason.
	Closed [NumReasons]uint64
}

// Guard watches the connections of one listener. Create it with New; its
// methods are safe for concurrent use.
type Guard struct {
	lim Limits
	log *slog.Logger

	accepted atomic.Uint64
	active   atomic.Int64
	frames   [NumFrameTypes]atomic.Uint64
	empty    atomic.Uint64
	goaways  [NumErrCodes]atomic.Uint64
	resets   [NumErrCodes]atomic.Uint64
	closed   [NumReasons]atomic.Uint64
}

// Option configures a Guard.
type Option func(*Guard)

// WithLogger sets the logger; closed connections are logged at debug level
// (an attack is seen in the counters, not in a log line per connection).
func WithLogger(l *slog.Logger) Option { return func(g *Guard) { g.log = l } }

// New returns a Guard enforcing lim.
func New(lim Limits, opts ...Option) *Guard {
	g := &Guard{lim: lim.withDefaults(), log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(g)
	}
	return g
}

// Stats returns the counters.
func (g *Guard) Stats() Stats {
	var s Stats
	s.ConnsAccepted = g.accepted.Load()
	s.ConnsActive = g.active.Load()
	for i := range s.FramesReceived {
		s.FramesReceived[i] = g.frames[i].Load()
	}
	s.EmptyFramesReceived = g.empty.Load()
	for i := range s.GoAwaysSent {
		s.GoAwaysSent[i] = g.goaways[i].Load()
		s.ResetsSent[i] = g.resets[i].Load()
	}
	for i := range s.Closed {
		s.Closed[i] = g.closed[i].Load()
	}
	return s
}

// Listener wraps l so that every accepted connection goes through Conn.
// Use it for plaintext listeners; with TLS, wrap the connection the TLS
// handshake returns instead (the frames are inside the TLS records).
//
// l's connections must read straight from their socket: a *net.TCPConn,
// or a wrapper that does not change what is read and whose NetConn
// method returns the one underneath. The guard may then read the socket
// itself when the server asks (see ReadOnReady).
func (g *Guard) Listener(l net.Listener) net.Listener { return &listener{Listener: l, g: g} }

type listener struct {
	net.Listener
	g *Guard
}

func (l *listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := l.g.Conn(nc).(*conn)
	c.raw = socketOf(nc)
	return c, nil
}

// Conn wraps a server-side connection on which the client will send the
// HTTP/2 preface next.
func (g *Guard) Conn(nc net.Conn) net.Conn {
	g.accepted.Add(1)
	g.active.Add(1)
	c := &conn{Conn: nc, g: g, born: time.Now(), wlock: make(chan struct{}, 1)}
	c.in.settingsTokens = float64(g.lim.SettingsBurst)
	c.in.pingTokens = float64(g.lim.PingBurst)
	return c
}

// errClosed is what the server's Read gets once the guard closed the
// connection.
type errClosed struct{ reason Reason }

func (e errClosed) Error() string { return "h2guard: connection closed: " + e.reason.String() }
func (e errClosed) Unwrap() error { return net.ErrClosed }

// After sending GOAWAY the guard waits up to drainTime (reading and
// discarding at most drainMax bytes) for the client to close, so that the
// close does not reset a connection with unread input and destroy the
// GOAWAY.
const (
	drainTime = time.Second
	drainMax  = 4 << 20
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// killLockWait is how long a kill waits for the server's writer to finish
// its current write before giving up on the GOAWAY: a write takes
// microseconds unless it is blocked on a client that does not read.
const killLockWait = 50 * time.Millisecond

// conn is a guarded connection. Read is called by the server's one reader
// goroutine, Write by its writer(s); the read-side state (in) belongs to
// the reader, the write-side state (out) is under the write lock.
type conn struct {
	net.Conn
	g         *Guard
	born      time.Time
	closeOnce sync.Once
	killed    atomic.Bool
	outData   atomic.Uint64 // DATA frames the server sent, read by the read side

	in inState
	// raw is the socket under a connection accepted by Listener, nil
	// otherwise (ReadOnReady).
	raw readySocket
	// wlock (a channel, so a kill can wait for it with a timeout) is held
	// across each Write and guards out.
	wlock chan struct{}
	out   outState
}

// NetConn returns the wrapped connection.
func (c *conn) NetConn() net.Conn { return c.Conn }

func (c *conn) now() int64 { return int64(time.Since(c.born)) }

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	return c.afterRead(p[:max(n, 0)], err)
}

// afterRead runs the read-side checks on bytes just read (and the read's
// error) and returns what the server's read returns.
func (c *conn) afterRead(p []byte, err error) (int, error) {
	if len(p) > 0 && c.in.preface >= 0 {
		if r, code, bad := c.scanIn(p); bad {
			return 0, c.kill(r, code)
		}
	}
	if err != nil && c.in.preface >= 0 && !c.in.settingsSeen && !c.in.timeoutSeen {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.in.timeoutSeen = true
			c.g.closed[HandshakeTimeout].Add(1)
		}
	}
	return len(p), err
}

func (c *conn) Write(p []byte) (int, error) {
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	if c.killed.Load() {
		return 0, errClosed{}
	}
	n, err := c.Conn.Write(p)
	c.scanOut(p[:n])
	return n, err
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.g.active.Add(-1) })
	return err
}

// kill closes the connection for r: GOAWAY with code if the server's
// writer is between frames (and not stuck in a write), a write shutdown
// and a short drain, then the close.
func (c *conn) kill(r Reason, code uint32) error {
	c.g.closed[r].Add(1)
	c.g.log.Debug("closing HTTP/2 connection", "reason", r.String(), "remote", c.RemoteAddr().String(), "age", time.Since(c.born))
	sent := false
	wait := time.NewTimer(killLockWait)
	select {
	case c.wlock <- struct{}{}:
		wait.Stop()
		// A GOAWAY can only go between two of the server's frames.
		if !c.killed.Load() && c.out.atBoundary() {
			_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Conn.Write(goAway(c.in.maxID, code, r.String())); err == nil {
				sent = true
				c.g.goaways[code].Add(1)
			}
		}
		c.killed.Store(true)
		<-c.wlock
	case <-wait.C:
		// The writer is blocked, on a client that does not read: no
		// GOAWAY can go in.
		c.killed.Store(true)
	}
	if sent {
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		c.drain()
	}
	// Unblock a writer stuck on a full socket before closing.
	_ = c.Conn.SetDeadline(time.Now())
	_ = c.Close()
	return errClosed{r}
}

func (c *conn) drain() {
	_ = c.Conn.SetReadDeadline(time.Now().Add(drainTime))
	buf := make([]byte, 32<<10)
	for total := 0; total < drainMax; {
		n, err := c.Conn.Read(buf)
		total += n
		if err != nil {
			return
		}
	}
}

// goAway encodes a GOAWAY frame.
func goAway(lastStream, code uint32, debug string) []byte {
	b := make([]byte, 9+8+len(debug))
	n := 8 + len(debug)
	b[0], b[1], b[2] = byte(n>>16), byte(n>>8), byte(n)
	b[3] = 0x7
	binary.BigEndian.PutUint32(b[9:], lastStream)
	binary.BigEndian.PutUint32(b[13:], code)
	copy(b[17:], debug)
	return b
}
