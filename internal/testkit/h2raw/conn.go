package h2raw

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Timeout bounds each wait of a Conn that has no deadline of its own: a
// flush, a handshake, Next and the Expect methods.
const Timeout = 5 * time.Second

// Conn is a hand-driven HTTP/2 client connection: it writes exactly the
// frames a test asks for, however malformed (its framer allows illegal
// writes), and reads what the server answers.
//
// Writes are buffered: Write and WriteRaw send at once, Queue and QueueRaw
// leave it to a later Flush, so that a flood costs one syscall per 64 KiB
// rather than one per frame. A write lock orders writes from any goroutine.
//
// Reading belongs to one goroutine: the test's, through ReadFrame, Until,
// Next and the Expect methods, or a Recorder's once Record has started it.
// Header blocks are decoded as they arrive (the server's HPACK state must be
// followed); a frame read is valid until the next read.
type Conn struct {
	nc    net.Conn
	start time.Time
	tb    testing.TB // set by New: the methods that fail a test use it
	rd    *keepReader

	wmu sync.Mutex // guards bw and fr's writes
	bw  *bufio.Writer
	fr  *http2.Framer // writes into bw, reads from rd

	hmu  sync.Mutex // guards henc, hbuf
	henc *hpack.Encoder
	hbuf bytes.Buffer

	streams atomic.Uint32 // client streams opened with NewStream
	// spoke is set once the client preface is out: only then does the
	// reader acknowledge the server's SETTINGS.
	spoke atomic.Bool

	// AckPings makes Until, and the methods that read through it, answer
	// the server's PINGs. By default they go unanswered, as a client that
	// does not read them would leave them.
	AckPings bool
	closed   bool     // a read found the connection ended
	err      error    // the last read error
	log      []string // every frame Until read, for failure messages
}

// DialTCP connects to addr and writes nothing: the test says what goes
// first (a preface byte by byte, HTTP/1.1, garbage). The caller closes it.
func DialTCP(addr string) (*Conn, error) {
	start := time.Now()
	nc, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		return nil, err
	}
	c := &Conn{nc: nc, start: start, rd: &keepReader{r: nc}}
	c.bw = bufio.NewWriterSize(nc, 64<<10)
	c.fr = http2.NewFramer(c.bw, c.rd)
	c.fr.AllowIllegalWrites = true
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c, nil
}

// Dial connects to addr and sends the client preface and a SETTINGS frame
// with settings, as every HTTP/2 client must. It reads nothing: the
// server's SETTINGS are the first frame a reader sees. A
// SETTINGS_HEADER_TABLE_SIZE among settings also bounds the Conn's HPACK
// decoder, as it binds the server's encoder. The caller closes it.
func Dial(addr string, settings ...http2.Setting) (*Conn, error) {
	c, err := DialTCP(addr)
	if err != nil {
		return nil, err
	}
	for _, s := range settings {
		if s.ID == http2.SettingHeaderTableSize {
			c.fr.ReadMetaHeaders = hpack.NewDecoder(s.Val, nil)
		}
	}
	err = c.Write(func(fr *http2.Framer) error {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		// Under the write lock: an acknowledgement cannot overtake the
		// preface.
		c.spoke.Store(true)
		return fr.WriteSettings(settings...)
	})
	if err != nil {
		c.nc.Close()
		return nil, err
	}
	return c, nil
}

// New is Dial for a test: it fails the test if the dial fails and closes
// the connection when the test ends. Only a Conn from New has Next, the
// Expect methods, Ping and Headers, which fail tb.
func New(tb testing.TB, addr string, settings ...http2.Setting) *Conn {
	tb.Helper()
	c, err := Dial(addr, settings...)
	if err != nil {
		tb.Fatal(err)
	}
	c.tb = tb
	tb.Cleanup(func() { _ = c.nc.Close() })
	return c
}

// Since is the time since the dial started.
func (c *Conn) Since() time.Duration { return time.Since(c.start) }

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// Queue runs f with the framer under the write lock; what it writes is
// buffered until Flush.
func (c *Conn) Queue(f func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f(c.fr)
}

// QueueRaw buffers raw bytes until Flush.
func (c *Conn) QueueRaw(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.bw.Write(p)
	return err
}

// Write is Queue, then Flush.
func (c *Conn) Write(f func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := f(c.fr); err != nil {
		return err
	}
	return c.flushLocked(time.Now().Add(Timeout))
}

// WriteRaw sends raw bytes (and what was queued before them).
func (c *Conn) WriteRaw(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.bw.Write(p); err != nil {
		return err
	}
	return c.flushLocked(time.Now().Add(Timeout))
}

// Flush sends what is queued, waiting at most Timeout for the server to
// take it.
func (c *Conn) Flush() error { return c.FlushBy(time.Now().Add(Timeout)) }

// FlushBy sends what is queued, giving up at deadline: a server that stops
// reading (throttling a flood) must not hold an attack past its phase.
func (c *Conn) FlushBy(deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked(deadline)
}

func (c *Conn) flushLocked(deadline time.Time) error {
	_ = c.nc.SetWriteDeadline(deadline)
	return c.bw.Flush()
}

// NewStream returns the next client stream id (1, 3, 5, ...).
func (c *Conn) NewStream() uint32 { return 2*c.streams.Add(1) - 1 }

// Streams is how many stream ids NewStream has handed out.
func (c *Conn) Streams() int { return int(c.streams.Load()) }

// EncodeHeaders HPACK-encodes fields with the connection's encoder. The
// block changes the encoder's dynamic table, so it must be sent, in the
// order encoded with the connection's other blocks.
func (c *Conn) EncodeHeaders(fields []hpack.HeaderField) []byte {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.hbuf.Reset()
	for _, f := range fields {
		_ = c.henc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// QueueRequest queues HEADERS for a new gRPC call on path (Request with
// extra name, value pairs) on the next stream and returns its id.
// endStream half-closes the stream at once: a call with no request
// message.
func (c *Conn) QueueRequest(path string, endStream bool, extra ...string) (uint32, error) {
	id := c.NewStream()
	block := c.EncodeHeaders(Request(path, extra...))
	return id, c.Queue(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: true})
	})
}

// Headers sends fields as one HEADERS frame (END_HEADERS set) on stream
// id, encoded with the connection's encoder; it fails the test if the
// write fails.
func (c *Conn) Headers(id uint32, fields []hpack.HeaderField, endStream bool) {
	c.tb.Helper()
	block := c.EncodeHeaders(fields)
	if err := c.Write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: endStream, EndHeaders: true})
	}); err != nil {
		c.tb.Fatal(err)
	}
}

// SetReadDeadline sets the deadline for ReadFrame.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// ReadFrame reads the next frame, waiting until the read deadline. It
// answers nothing.
func (c *Conn) ReadFrame() (http2.Frame, error) { return c.fr.ReadFrame() }

// Until reads frames until match accepts one, which it returns with the
// time since dial; until the connection ends (nil and the time since dial;
// Closed is then true); or until d has passed (nil, 0). It acknowledges the
// server's SETTINGS, and its PINGs when AckPings is set, and logs every
// frame for FrameLog. match sees every frame.
func (c *Conn) Until(d time.Duration, match func(http2.Frame) bool) (http2.Frame, time.Duration) {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.err = err
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, 0
			}
			c.closed = true
			c.log = append(c.log, fmt.Sprintf("%v: ended: %v", c.Since(), err))
			return nil, c.Since()
		}
		c.log = append(c.log, fmt.Sprintf("%v: %v", c.Since(), f))
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() && c.spoke.Load() {
				_ = c.Write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() && c.AckPings {
				_ = c.Write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		}
		if match(f) {
			return f, c.Since()
		}
	}
}

// Closed reports whether a read found the connection ended (EOF, reset).
func (c *Conn) Closed() bool { return c.closed }

// FrameLog lists, one a line, every frame Until read and when.
func (c *Conn) FrameLog() string { return strings.Join(c.log, "\n") }

// Next reads frames as Until does for up to Timeout until match accepts one,
// and fails the test if none does.
func (c *Conn) Next(what string, match func(http2.Frame) bool) http2.Frame {
	c.tb.Helper()
	f, _ := c.Until(Timeout, match)
	if f == nil {
		c.tb.Fatalf("waiting for %s: %v", what, c.err)
	}
	return f
}

// ExpectGoAway waits for a GOAWAY and fails the test unless it carries
// code. It returns a copy of the frame, valid after further reads.
func (c *Conn) ExpectGoAway(code http2.ErrCode) *GoAway {
	c.tb.Helper()
	f, at := c.Until(Timeout, IsGoAway)
	if f == nil {
		c.tb.Fatalf("no GOAWAY within %v (%v); frames:\n%s", Timeout, c.err, c.FrameLog())
	}
	g := f.(*http2.GoAwayFrame)
	if g.ErrCode != code {
		c.tb.Fatalf("GOAWAY %v %q, want %v", g.ErrCode, g.DebugData(), code)
	}
	return &GoAway{Code: g.ErrCode, LastStreamID: g.LastStreamID, Debug: string(g.DebugData()), At: at}
}

// ExpectRST waits for an RST_STREAM and fails the test unless it resets
// stream id with code.
func (c *Conn) ExpectRST(id uint32, code http2.ErrCode) {
	c.tb.Helper()
	f := c.Next("RST_STREAM", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != id || rst.ErrCode != code {
		c.tb.Fatalf("RST_STREAM(%d, %v), want (%d, %v)", rst.StreamID, rst.ErrCode, id, code)
	}
}

// Ping sends a PING and waits for its ACK: the connection still answers.
func (c *Conn) Ping() {
	c.tb.Helper()
	data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := c.Write(func(fr *http2.Framer) error { return fr.WritePing(false, data) }); err != nil {
		c.tb.Fatal(err)
	}
	c.Next("PING ACK", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck() && p.Data == data
	})
}

// IsGoAway matches a GOAWAY frame.
func IsGoAway(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }

// keepReader keeps the first bytes read, to show what a server that did
// not answer in HTTP/2 said.
type keepReader struct {
	r    net.Conn
	kept []byte
}

// Read reads from the connection, keeping what it reads until 4 KiB are
// kept.
func (r *keepReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if len(r.kept) < 4096 {
		r.kept = append(r.kept, p[:min(n, 4096-len(r.kept))]...)
	}
	return n, err
}
