package engine

import (
	"testing"
	"time"

	"golang.org/x/net/http2"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// kaClient is a raw HTTP/2 connection for the keepalive tests: it answers
// meshd's PINGs (unless AckPings is cleared), counts them, and reports what
// came and when instead of failing the test on a read error (a closed
// connection is what many cases expect).
type kaClient struct {
	*h2raw.Conn
	t      *testing.T
	pinged int // keepalive PINGs received
}

func newKAClient(t *testing.T, addr string) *kaClient {
	t.Helper()
	c := &kaClient{Conn: h2raw.New(t, addr), t: t}
	c.AckPings = true
	return c
}

// until is Conn.Until, counting meshd's keepalive PINGs.
func (c *kaClient) until(d time.Duration, match func(http2.Frame) bool) (http2.Frame, time.Duration) {
	return c.Until(d, func(f http2.Frame) bool {
		if isServerPing(f) {
			c.pinged++
		}
		return match(f)
	})
}

// goAway waits for a GOAWAY and checks its code and debug data.
func (c *kaClient) goAway(code http2.ErrCode, debug string) time.Duration {
	c.t.Helper()
	g := c.ExpectGoAway(code)
	if g.Debug != debug {
		c.t.Fatalf("GOAWAY %v %q, want %v %q", g.Code, g.Debug, code, debug)
	}
	return g.At
}

// end waits for the connection to close and returns when it did.
func (c *kaClient) end(d time.Duration) time.Duration {
	c.t.Helper()
	_, at := c.until(d, func(http2.Frame) bool { return false })
	if !c.Closed() {
		c.t.Fatalf("connection still open after %v", d)
	}
	return at
}

// quiet checks that nothing matching bad arrives, and the connection stays
// open, for d.
func (c *kaClient) quiet(d time.Duration, bad func(http2.Frame) bool) {
	c.t.Helper()
	if f, at := c.until(d, bad); f != nil || c.Closed() {
		c.t.Fatalf("at %v: got %v (closed: %v), want nothing for %v", at, f, c.Closed(), d)
	}
}

// pingAck sends a PING and waits for its ACK; it reports false if a
// GOAWAY or the close came first.
func (c *kaClient) pingAck(i byte) bool {
	c.t.Helper()
	data := [8]byte{'t', 'e', 's', 't', 0, 0, 0, i}
	if err := c.Write(func(fr *http2.Framer) error { return fr.WritePing(false, data) }); err != nil {
		return false
	}
	f, _ := c.until(5*time.Second, func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return h2raw.IsGoAway(f) || ok && p.IsAck() && p.Data == data
	})
	_, ok := f.(*http2.PingFrame)
	return ok
}

// openStream opens a FullDuplexCall stream that stays open until the
// client ends it.
func (c *kaClient) openStream(id uint32) {
	c.Headers(id, h2raw.Request("/grpc.testing.TestService/FullDuplexCall"), false)
}

func isServerPing(f http2.Frame) bool {
	p, ok := f.(*http2.PingFrame)
	return ok && !p.IsAck() && string(p.Data[:]) == keepalivePing
}

// TestIdleTimeoutGoAway: a client connection without streams for
// IdleTimeout gets grpc-go's graceful GOAWAY ("max_idle") and is closed;
// one with an open stream is not.
func TestIdleTimeoutGoAway(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	const idle = 100 * time.Millisecond
	p := startProxy(t, b.addr, Config{IdleTimeout: idle})

	c := newKAClient(t, p.addr)
	if at := c.goAway(http2.ErrCodeNo, "max_idle"); at < idle {
		t.Errorf("GOAWAY at %v, before the idle timeout %v", at, idle)
	}
	c.goAway(http2.ErrCodeNo, "max_idle") // the final one
	c.end(5 * time.Second)

	busy := newKAClient(t, p.addr)
	busy.openStream(1)
	busy.quiet(3*idle, h2raw.IsGoAway)
}

// TestMaxConnectionAge: past MaxConnectionAge a connection is drained
// (GOAWAY "max_age"); an open stream may finish when there is no grace,
// and is cut at the end of the grace otherwise.
func TestMaxConnectionAge(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	const age, grace = 100 * time.Millisecond, 200 * time.Millisecond
	minAge := age - age/10 // grpc-go's jitter: ±10%

	t.Run("no streams", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, b.addr, Config{MaxConnectionAge: age})
		c := newKAClient(t, p.addr)
		if at := c.goAway(http2.ErrCodeNo, "max_age"); at < minAge {
			t.Errorf("GOAWAY at %v, before max age %v-10%%", at, age)
		}
		c.goAway(http2.ErrCodeNo, "max_age")
		c.end(5 * time.Second)
	})
	t.Run("open stream, no grace", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, b.addr, Config{MaxConnectionAge: age})
		c := newKAClient(t, p.addr)
		c.openStream(1)
		c.goAway(http2.ErrCodeNo, "max_age")
		f, _ := c.until(5*time.Second, h2raw.IsGoAway)
		if g, ok := f.(*http2.GoAwayFrame); !ok || g.LastStreamID != 1 {
			t.Fatalf("final GOAWAY: %v, want last stream 1", f)
		}
		// The stream outlives the age by far, then ends normally.
		c.quiet(3*grace, h2raw.IsGoAway)
		msg := h2raw.MarshalMessage(t, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}}})
		if err := c.Write(func(fr *http2.Framer) error { return fr.WriteData(1, true, msg) }); err != nil {
			t.Fatal(err)
		}
		f, _ = c.until(5*time.Second, func(f http2.Frame) bool {
			h, ok := f.(*http2.MetaHeadersFrame)
			return ok && h.StreamEnded()
		})
		h, ok := f.(*http2.MetaHeadersFrame)
		if !ok {
			t.Fatalf("stream did not end (closed: %v)", c.Closed())
		}
		if s := trailer(h, "grpc-status"); s != "0" {
			t.Fatalf("grpc-status %q, want 0", s)
		}
		c.end(5 * time.Second)
	})
	t.Run("open stream, grace", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, b.addr, Config{MaxConnectionAge: age, MaxConnectionAgeGrace: grace})
		c := newKAClient(t, p.addr)
		c.openStream(1)
		c.goAway(http2.ErrCodeNo, "max_age")
		if at := c.end(5 * time.Second); at < minAge+grace {
			t.Errorf("closed at %v, before max age + grace %v", at, minAge+grace)
		}
	})
}

func trailer(h *http2.MetaHeadersFrame, name string) string {
	for _, f := range h.RegularFields() {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// TestKeepalivePing: after KeepaliveTime without a frame from the client,
// meshd PINGs it; a client that answers keeps its connection, one that
// does not loses it KeepaliveTimeout later.
func TestKeepalivePing(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	const kaTime, kaTimeout = 100 * time.Millisecond, 100 * time.Millisecond
	p := startProxy(t, b.addr, Config{KeepaliveTime: kaTime, KeepaliveTimeout: kaTimeout})

	t.Run("answered", func(t *testing.T) {
		t.Parallel()
		c := newKAClient(t, p.addr)
		for i := 0; i < 3; i++ {
			if f, _ := c.until(5*time.Second, isServerPing); f == nil {
				t.Fatalf("keepalive PING %d: none (closed: %v)", i+1, c.Closed())
			}
		}
		if !c.pingAck(1) {
			t.Fatal("connection unusable after answering keepalive PINGs")
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		t.Parallel()
		c := newKAClient(t, p.addr)
		c.AckPings = false
		_, pingAt := c.until(5*time.Second, isServerPing)
		if c.Closed() || pingAt == 0 {
			t.Fatal("no keepalive PING")
		}
		if pingAt < kaTime {
			t.Errorf("PING at %v, before keepalive time %v", pingAt, kaTime)
		}
		if at := c.end(5 * time.Second); at < pingAt+kaTimeout/2 {
			t.Errorf("closed at %v, PING at %v: before keepalive timeout %v", at, pingAt, kaTimeout)
		}
	})
	t.Run("activity defers the PING", func(t *testing.T) {
		t.Parallel()
		const kaTime = 300 * time.Millisecond
		p := startProxy(t, b.addr, Config{KeepaliveTime: kaTime, KeepaliveTimeout: kaTimeout})
		c := newKAClient(t, p.addr)
		tick := time.NewTicker(kaTime / 10)
		defer tick.Stop()
		for i := 0; i < 15; i++ { // 1.5 keepalive times
			<-tick.C
			if !c.pingAck(byte(i)) {
				t.Fatal("connection closed while active")
			}
		}
		if c.pinged != 0 {
			t.Fatalf("%d keepalive PINGs on an active connection", c.pinged)
		}
		// Silent from now on: the PING comes.
		if f, _ := c.until(5*time.Second, isServerPing); f == nil {
			t.Fatalf("no keepalive PING once silent (closed: %v)", c.Closed())
		}
	})
	t.Run("off", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, b.addr, Config{KeepaliveTime: -1})
		c := newKAClient(t, p.addr)
		c.quiet(3*kaTime, isServerPing)
	})
}

// TestPingPolicy: client PINGs against KeepaliveMinTime and
// KeepalivePermitWithoutStream get strikes; the third gets GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings" (after the PING's ACK) and the close,
// counted once, not as a PING flood.
func TestPingPolicy(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	tests := []struct {
		name    string
		cfg     Config
		every   time.Duration // between PINGs
		stream  bool          // with a stream open
		respond bool          // response data before each PING
		closed  bool          // want too_many_pings at the 4th PING
	}{
		{name: "faster than min time", cfg: Config{KeepaliveMinTime: time.Hour, KeepalivePermitWithoutStream: true}, closed: true},
		{name: "faster than min time, stream open", cfg: Config{KeepaliveMinTime: time.Hour}, stream: true, closed: true},
		{name: "at min time", cfg: Config{KeepaliveMinTime: 20 * time.Millisecond, KeepalivePermitWithoutStream: true}, every: 30 * time.Millisecond},
		{name: "no stream, not permitted", cfg: Config{KeepaliveMinTime: 20 * time.Millisecond}, every: 30 * time.Millisecond, closed: true},
		{name: "stream open, not permitted", cfg: Config{KeepaliveMinTime: 20 * time.Millisecond}, every: 30 * time.Millisecond, stream: true},
		{name: "response data resets strikes", cfg: Config{KeepaliveMinTime: time.Hour}, stream: true, respond: true},
		{name: "no enforcement by default", cfg: Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := startProxy(t, b.addr, tt.cfg)
			c := newKAClient(t, p.addr)
			if tt.stream {
				c.openStream(1)
			}
			msg := h2raw.MarshalMessage(t, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 100}}})
			var tick <-chan time.Time
			if tt.every > 0 {
				tk := time.NewTicker(tt.every)
				defer tk.Stop()
				tick = tk.C
			}
			const pings = 6
			for i := 0; i < pings; i++ {
				if tick != nil {
					<-tick
				}
				if tt.respond {
					if err := c.Write(func(fr *http2.Framer) error { return fr.WriteData(1, false, msg) }); err != nil {
						t.Fatal(err)
					}
					if f, _ := c.until(5*time.Second, func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }); f == nil {
						t.Fatalf("no response data (closed: %v)", c.Closed())
					}
				}
				acked := c.pingAck(byte(i))
				switch {
				case tt.closed && i == maxPingStrikes+1:
					if !acked {
						t.Fatalf("PING %d: no ACK before the GOAWAY", i+1)
					}
					c.goAway(http2.ErrCodeEnhanceYourCalm, tooManyPings)
					c.end(5 * time.Second)
					a := p.srv.AbuseStats()
					if a.GoAwaysSent[http2.ErrCodeEnhanceYourCalm] != 1 || a.Closed[AbusePingFlood] != 0 {
						t.Errorf("counted %d ENHANCE_YOUR_CALM GOAWAYs and %d ping floods, want 1 and 0",
							a.GoAwaysSent[http2.ErrCodeEnhanceYourCalm], a.Closed[AbusePingFlood])
					}
					return
				case !acked:
					t.Fatalf("PING %d: GOAWAY or close instead of the ACK (closed: %v)", i+1, c.Closed())
				}
			}
			if tt.closed {
				t.Fatalf("no GOAWAY after %d PINGs", pings)
			}
			if tt.stream {
				c.rst(1)
			}
		})
	}
}

// rst cancels a stream, so the proxy's leak check finds it released.
func (c *kaClient) rst(id uint32) {
	_ = c.Write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) })
	c.pingAck(0xff)
}
