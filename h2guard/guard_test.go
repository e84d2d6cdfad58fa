package h2guard

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/mem"
)

// stream builds a client byte stream with a real HTTP/2 framer.
type stream struct {
	buf bytes.Buffer
	fr  *http2.Framer
}

func newStream(preface bool) *stream {
	s := &stream{}
	if preface {
		s.buf.WriteString(http2.ClientPreface)
	}
	s.fr = http2.NewFramer(&s.buf, nil)
	s.fr.AllowIllegalWrites = true
	return s
}

func (s *stream) settings() *stream { _ = s.fr.WriteSettings(); return s }

func (s *stream) headers(id uint32, end bool, block []byte) *stream {
	_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: end})
	return s
}

var requestBlock = func() []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", "POST"}, {":path", "/p.S/M"}, {":scheme", "http"}, {":authority", "a"}, {"content-type", "application/grpc"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return b.Bytes()
}()

// feed runs the stream through a guarded connection's parser in chunks of
// n bytes (0: all at once) and returns the first verdict.
func feed(t *testing.T, g *Guard, data []byte, n int) (Reason, bool) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	c := g.Conn(a).(*conn)
	if n <= 0 {
		n = len(data)
	}
	for len(data) > 0 {
		k := min(n, len(data))
		if r, _, bad := c.scanIn(data[:k]); bad {
			return r, true
		}
		data = data[k:]
	}
	return 0, false
}

func TestFramesCountedAcrossReadSplits(t *testing.T) {
	t.Parallel()
	s := newStream(true).settings().headers(1, false, requestBlock)
	_ = s.fr.WriteData(1, true, []byte("hello"))
	_ = s.fr.WriteDataPadded(3, false, []byte("x"), make([]byte, 10))
	_ = s.fr.WritePing(false, [8]byte{1})
	_ = s.fr.WriteWindowUpdate(0, 1000)
	_ = s.fr.WritePriority(1, http2.PriorityParam{Weight: 1})
	_ = s.fr.WriteRawFrame(0x20, 0, 0, []byte("ext"))
	_ = s.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	_ = s.fr.WriteSettingsAck()
	want := [NumFrameTypes]uint64{0: 2, 1: 1, 2: 1, 3: 1, 4: 2, 6: 1, 8: 1, 10: 1}
	for _, n := range []int{0, 1, 2, 3, 7, 9, 10, 64} {
		g := New(Limits{})
		if r, bad := feed(t, g, s.buf.Bytes(), n); bad {
			t.Fatalf("chunks of %d: closed for %s", n, r)
		}
		st := g.Stats()
		if st.FramesReceived != want {
			t.Errorf("chunks of %d: frames %v, want %v", n, st.FramesReceived, want)
		}
		if st.EmptyFramesReceived != 0 {
			t.Errorf("chunks of %d: %d empty frames, want 0 (the padded DATA carries a byte)", n, st.EmptyFramesReceived)
		}
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	rapid := func(streams, resets int) []byte {
		s := newStream(true).settings()
		for i := 0; i < streams; i++ {
			id := uint32(2*i + 1)
			s.headers(id, true, requestBlock)
			if i < resets {
				_ = s.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}
		}
		return s.buf.Bytes()
	}
	repeat := func(n int, f func(s *stream)) []byte {
		s := newStream(true).settings().headers(1, false, requestBlock)
		for range n {
			f(s)
		}
		return s.buf.Bytes()
	}
	emptyData := func(s *stream) { _ = s.fr.WriteData(1, false, nil) }
	emptyPadded := func(s *stream) { _ = s.fr.WriteDataPadded(1, false, nil, make([]byte, 8)) }
	settings := func(s *stream) { _ = s.fr.WriteSettings() }
	ping := func(s *stream) { _ = s.fr.WritePing(false, [8]byte{}) }
	pingAck := func(s *stream) { _ = s.fr.WritePing(true, [8]byte{}) }
	window := func(s *stream) { _ = s.fr.WriteWindowUpdate(0, 1) }
	priority := func(s *stream) { _ = s.fr.WritePriority(1, http2.PriorityParam{Weight: 1}) }
	oversized := func(size int) []byte {
		s := newStream(true).settings()
		_ = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: requestBlock})
		for size > 0 {
			n := min(size, 16384)
			_ = s.fr.WriteContinuation(1, n == size, make([]byte, n))
			size -= n
		}
		return s.buf.Bytes()
	}
	for _, tc := range []struct {
		name string
		data []byte
		want Reason // NumReasons: not closed
	}{
		{"100 streams all reset at once", rapid(100, 100), RapidReset},
		{"100 streams, 49 reset at once", rapid(100, 49), NumReasons},
		{"99 streams all reset at once", rapid(99, 99), NumReasons},
		{"1000 streams, 600 reset at once", rapid(1000, 600), RapidReset},
		{"10 empty DATA", repeat(10, emptyData), NumReasons},
		{"11 empty DATA", repeat(11, emptyData), EmptyFrames},
		{"11 padded empty DATA", repeat(11, emptyPadded), EmptyFrames},
		{"100 SETTINGS", repeat(99, settings), NumReasons}, // plus the first one
		{"101 SETTINGS", repeat(100, settings), SettingsFlood},
		{"100 PING", repeat(100, ping), NumReasons},
		{"101 PING", repeat(101, ping), PingFlood},
		{"1000 PING ACK", repeat(1000, pingAck), NumReasons},
		{"102 WINDOW_UPDATE, one stream", repeat(102, window), NumReasons},
		{"103 WINDOW_UPDATE, one stream", repeat(103, window), WindowUpdateFlood},
		{"200 PRIORITY, one stream", repeat(200, priority), NumReasons},
		{"201 PRIORITY, one stream", repeat(201, priority), ExtraFrames},
		{"header block at the limit", oversized(1000 - len(requestBlock)), NumReasons},
		{"header block over the limit", oversized(1001 - len(requestBlock)), HeadersTooLarge},
		{"first frame not SETTINGS", func() []byte { s := newStream(true); _ = s.fr.WritePing(false, [8]byte{}); return s.buf.Bytes() }(), ProtocolError},
		{"frame over max frame size", func() []byte {
			s := newStream(true).settings()
			_ = s.fr.WriteData(1, false, make([]byte, 16385))
			return s.buf.Bytes()
		}(), FrameTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, n := range []int{0, 5} {
				g := New(Limits{MaxHeaderListSize: 1000})
				r, bad := feed(t, g, tc.data, n)
				switch {
				case tc.want == NumReasons && bad:
					t.Errorf("chunks of %d: closed for %s, want left alone", n, r)
				case tc.want != NumReasons && (!bad || r != tc.want):
					t.Errorf("chunks of %d: closed %v for %s, want closed for %s", n, bad, r, tc.want)
				}
			}
		})
	}
}

func TestNotHTTP2IsCountedNotClosed(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x16\x03\x01\x02\x00", "PRI * HTTP/2.0\r\n\r\nXX"} {
		g := New(Limits{})
		if r, bad := feed(t, g, []byte(in), 1); bad {
			t.Errorf("%q: closed for %s", in, r)
		}
		if got := g.Stats().Closed[NotHTTP2]; got != 1 {
			t.Errorf("%q: not_http2 = %d, want 1", in, got)
		}
	}
}

func TestOutboundCounts(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	_ = fr.WriteSettings()
	_ = fr.WriteData(1, false, []byte("abc"))
	_ = fr.WriteRSTStream(3, http2.ErrCodeRefusedStream)
	_ = fr.WriteRSTStream(5, http2.ErrCodeRefusedStream)
	_ = fr.WriteGoAway(7, http2.ErrCodeEnhanceYourCalm, []byte("too_many_pings"))
	data := out.Bytes()
	for _, n := range []int{1, 4, 9, 13, len(data)} {
		g := New(Limits{})
		a, b := net.Pipe()
		c := g.Conn(a).(*conn)
		for p := data; len(p) > 0; {
			k := min(n, len(p))
			c.scanOut(p[:k])
			p = p[k:]
		}
		if !c.out.atBoundary() {
			t.Errorf("writes of %d: not at a frame boundary after whole frames", n)
		}
		st := g.Stats()
		if st.ResetsSent[0x7] != 2 || st.GoAwaysSent[0xb] != 1 || c.outData.Load() != 1 {
			t.Errorf("writes of %d: resets %v goaways %v data %d", n, st.ResetsSent, st.GoAwaysSent, c.outData.Load())
		}
		a.Close()
		b.Close()
	}
}

// serve runs a "server" on the guarded end of a real TCP connection: it
// writes its SETTINGS, then reads until the guard (or the client) ends the
// connection, and returns the read error.
func serve(t *testing.T, g *Guard) (client net.Conn, done <-chan error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	glis := g.Listener(lis)
	errc := make(chan error, 1)
	go func() {
		sc, err := glis.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer sc.Close()
		if err := http2.NewFramer(sc, nil).WriteSettings(); err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(io.Discard, sc)
		errc <- err
	}()
	client, err = net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client, errc
}

func TestClosedWithGoAway(t *testing.T) {
	t.Parallel()
	g := New(Limits{})
	client, done := serve(t, g)
	s := newStream(true).settings().headers(1, false, requestBlock)
	for range 11 {
		_ = s.fr.WriteData(1, false, nil)
	}
	if _, err := client.Write(s.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	fr := http2.NewFramer(nil, client)
	var goaway *http2.GoAwayFrame
	for goaway == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before %v", err)
		}
		goaway, _ = f.(*http2.GoAwayFrame)
	}
	if goaway.ErrCode != http2.ErrCodeEnhanceYourCalm || string(goaway.DebugData()) != "empty_frames" || goaway.LastStreamID != 1 {
		t.Errorf("GOAWAY %v %q last %d; want ENHANCE_YOUR_CALM empty_frames last 1", goaway.ErrCode, goaway.DebugData(), goaway.LastStreamID)
	}
	if _, err := fr.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Errorf("after the GOAWAY: %v, want EOF", err)
	}
	client.Close() // ends the guard's drain at once
	if err := <-done; err == nil || !strings.Contains(err.Error(), "empty_frames") {
		t.Errorf("server read error %v, want the guard's", err)
	}
	st := g.Stats()
	if st.Closed[EmptyFrames] != 1 || st.GoAwaysSent[codeCalm] != 1 || st.ConnsAccepted != 1 || st.ConnsActive != 0 {
		t.Errorf("stats %+v", st)
	}
}

// A server writer blocked on a client that does not read holds the write
// lock: the guard gives up on the GOAWAY, closes, and unblocks the writer.
func TestClosedWhileWriterBlocked(t *testing.T) {
	t.Parallel()
	g := New(Limits{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	raw, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := g.Conn(raw)
	defer sc.Close()
	writeErr := make(chan error, 1)
	var written atomic.Int64
	go func() {
		// One 16 MiB DATA frame: the client never reads, the socket
		// buffers fill, Write blocks holding the lock mid-frame.
		var hdr [9]byte
		hdr[0], hdr[1], hdr[2] = 0xff, 0xff, 0xff
		if _, err := sc.Write(hdr[:]); err != nil {
			writeErr <- err
			return
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := sc.Write(buf)
			written.Add(int64(n))
			if err != nil {
				writeErr <- err
				return
			}
		}
	}()
	// Wait until the writer is stuck: no progress for 200ms.
	for last, still, deadline := int64(-1), time.Now(), time.Now().Add(10*time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked")
		}
		if w := written.Load(); w != last {
			last, still = w, time.Now()
		} else if last > 0 && time.Since(still) > 200*time.Millisecond {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	s := newStream(true).settings()
	for range 150 {
		_ = s.fr.WriteSettings()
	}
	if _, err := client.Write(s.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	readErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, sc)
		readErr <- err
	}()
	select {
	case err := <-readErr:
		if err == nil || !strings.Contains(err.Error(), "settings_flood") {
			t.Errorf("read error %v, want the guard's", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the guard did not close the connection")
	}
	select {
	case <-writeErr:
	case <-time.After(5 * time.Second):
		t.Fatal("the blocked writer was not released")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closing took %s", took)
	}
	if st := g.Stats(); st.Closed[SettingsFlood] != 1 || st.GoAwaysSent[codeCalm] != 0 {
		t.Errorf("closed %v goaways %v; want settings_flood and no GOAWAY", st.Closed, st.GoAwaysSent)
	}
}

func TestHandshakeTimeoutCounted(t *testing.T) {
	t.Parallel()
	g := New(Limits{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	raw, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := g.Conn(raw)
	defer sc.Close()
	if _, err := client.Write([]byte("PRI * HT")); err != nil {
		t.Fatal(err)
	}
	_ = sc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = io.ReadFull(sc, make([]byte, len(clientPreface)))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read: %v, want a timeout", err)
	}
	if got := g.Stats().Closed[HandshakeTimeout]; got != 1 {
		t.Errorf("handshake_timeout = %d, want 1", got)
	}
}

// ReadOnReady (grpc-go's read path for idle connections) reads the socket
// itself on a connection accepted through Listener and applies the same
// checks as Read.
func TestReadOnReady(t *testing.T) {
	t.Parallel()
	g := New(Limits{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	glis := g.Listener(lis)
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := glis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	rr, ok := sc.(interface {
		ReadOnReady(int, mem.BufferPool) (*[]byte, int, error)
	})
	if !ok || sc.(*conn).raw == nil {
		t.Fatal("a connection accepted from a TCP listener does not read its socket itself")
	}
	good := newStream(true).settings().headers(1, false, requestBlock)
	_ = good.fr.WriteData(1, true, []byte("hello"))
	bad := newStream(false).headers(3, false, requestBlock)
	for range 11 {
		_ = bad.fr.WriteData(3, false, nil)
	}
	if _, err := client.Write(good.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	pool := mem.DefaultBufferPool()
	var got []byte
	for len(got) < good.buf.Len() {
		b, n, err := rr.ReadOnReady(16, pool)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, (*b)[:n]...)
		pool.Put(b)
	}
	if !bytes.Equal(got, good.buf.Bytes()) {
		t.Fatal("ReadOnReady returned other bytes than the client sent")
	}
	if _, err := client.Write(bad.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, client) }() // read the GOAWAY
	for {
		b, n, err := rr.ReadOnReady(16, pool)
		if err != nil {
			if !strings.Contains(err.Error(), "empty_frames") {
				t.Errorf("read error %v, want the guard's", err)
			}
			break
		}
		pool.Put(b)
		if n == 0 {
			t.Fatal("ReadOnReady returned nothing and no error")
		}
	}
	if st := g.Stats(); st.Closed[EmptyFrames] != 1 || st.FramesReceived[0] != 12 {
		t.Errorf("closed %v frames %v", st.Closed, st.FramesReceived)
	}
}

// PINGs are credited by the DATA frames the client received: a client
// that pings once per burst of data it gets (grpc-go's BDP estimation)
// is never cut off, however long it downloads.
func TestPingCreditFromData(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	// 1000 PINGs, each after a DATA frame: each DATA frame credits two.
	g := New(Limits{})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := g.Conn(a).(*conn)
	preface := newStream(true).settings().buf.Bytes()
	if _, _, bad := c.scanIn(preface); bad {
		t.Fatal("preface rejected")
	}
	one := newStream(false)
	_ = one.fr.WritePing(false, [8]byte{})
	for i := range 1000 {
		out.Reset()
		_ = fr.WriteData(1, false, []byte("payload"))
		c.scanOut(out.Bytes())
		if r, _, bad := c.scanIn(one.buf.Bytes()); bad {
			t.Fatalf("PING %d after as many DATA frames: closed for %s", i+1, r)
		}
	}
}
