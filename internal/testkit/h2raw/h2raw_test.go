package h2raw

import (
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// refuser is a backend that answers PINGs, refuses every stream and goes
// away, with code ENHANCE_YOUR_CALM, on the PING "go away".
func refuser(t *testing.T) string {
	return StartBackend(t, func(sc *ServerConn, f http2.Frame) error {
		switch f := f.(type) {
		case *http2.PingFrame:
			if f.Data == goAwayPing {
				return sc.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("bye"))
			}
			if !f.IsAck() {
				return sc.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.PseudoValue("path") != "/a.B/C" || f.PseudoValue("authority") != Authority {
				block := sc.EncodeHeaders(hpack.HeaderField{Name: ":status", Value: "400"})
				return sc.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block, EndStream: true, EndHeaders: true})
			}
			return sc.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}
		return nil
	}).Addr()
}

var goAwayPing = [8]byte{'g', 'o', ' ', 'a', 'w', 'a', 'y'}

func TestConn(t *testing.T) {
	t.Parallel()
	c := New(t, refuser(t))
	c.Next("SETTINGS", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
	c.Next("SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
	c.Ping()
	c.Headers(1, Request("/a.B/C", "x-k", "v"), true)
	c.ExpectRST(1, http2.ErrCodeRefusedStream)
	c.Headers(3, Request("/a.B/C"), false) // the encoder's dynamic table in use
	if err := c.Write(func(fr *http2.Framer) error { return fr.WriteData(3, true, Message([]byte("hi"))) }); err != nil {
		t.Fatal(err)
	}
	c.ExpectRST(3, http2.ErrCodeRefusedStream)
	if err := c.Write(func(fr *http2.Framer) error { return fr.WritePing(false, goAwayPing) }); err != nil {
		t.Fatal(err)
	}
	if g := c.ExpectGoAway(http2.ErrCodeEnhanceYourCalm); g.Debug != "bye" || g.At <= 0 {
		t.Errorf("GOAWAY %v", g)
	}
}

func TestRecorder(t *testing.T) {
	t.Parallel()
	r, err := Handshake(refuser(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if s := r.Result().Settings; s == nil {
		t.Fatal("Handshake returned before the server's SETTINGS")
	}
	for range 3 {
		if _, err := r.QueueRequest("/a.B/C", true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.QueueRequest("/other", true); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(); err != nil || r.Streams() != 4 {
		t.Fatalf("flush: %v, %d streams", err, r.Streams())
	}
	deadline := time.After(5 * time.Second)
	for res := r.Result(); res.Resets[http2.ErrCodeRefusedStream] < 3 || res.Statuses["http:400"] < 1; res = r.Result() {
		select {
		case <-r.Changed():
		case <-deadline:
			t.Fatalf("no answer to every stream: %v", res)
		}
	}
	if err := r.Write(func(fr *http2.Framer) error { return fr.WritePing(false, goAwayPing) }); err != nil {
		t.Fatal(err)
	}
	res := r.WaitEnd(5 * time.Second)
	if res.GoAway == nil || res.GoAway.Code != http2.ErrCodeEnhanceYourCalm || res.GoAway.Debug != "bye" || !res.Ended {
		t.Errorf("%v; want GOAWAY ENHANCE_YOUR_CALM \"bye\" and the close", res)
	}
}

// TestRecorderNotHTTP2: a server that answers in something other than
// HTTP/2 ends the connection with its first bytes kept.
func TestRecorderNotHTTP2(t *testing.T) {
	t.Parallel()
	c, err := DialTCP(StartBackend(t, nil).Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := Record(c)
	defer r.Close()
	if err := r.WriteRaw([]byte("GET / HTTP/1.1\r\nHost: meshd.test\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if res := r.WaitEnd(5 * time.Second); !res.Ended || res.Frames[http2.FrameSettings] != 0 {
		t.Errorf("%v; want the connection closed without SETTINGS", res)
	}
}
