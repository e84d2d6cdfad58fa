package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

func TestProtocol(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	hole := testkit.BlackHole(t).Addr()
	cfg := Config{MaxConcurrentStreams: 2, InitialWindowSize: 65535, MaxHeaderListSize: 4096, DialTimeout: 3 * time.Second}
	p := startProxy(t, b.addr, cfg)
	p.route(func(req *Request) (Target, error) {
		if strings.HasSuffix(req.Method, "/Hole") {
			return Target{Addr: hole}, nil
		}
		return Target{Addr: b.addr}, nil
	})
	const unaryPath = "/grpc.testing.TestService/UnaryCall"

	tests := []struct {
		name string
		run  func(t *testing.T, rc *h2raw.Conn)
	}{
		{"server settings", func(t *testing.T, rc *h2raw.Conn) {
			f := rc.Next("SETTINGS", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
			sf := f.(*http2.SettingsFrame)
			if v, _ := sf.Value(http2.SettingMaxConcurrentStreams); v != 2 {
				t.Errorf("MAX_CONCURRENT_STREAMS = %d, want 2", v)
			}
			if v, _ := sf.Value(http2.SettingMaxFrameSize); v != 16384 {
				t.Errorf("MAX_FRAME_SIZE = %d, want 16384", v)
			}
			if v, _ := sf.Value(http2.SettingMaxHeaderListSize); v != 4096 {
				t.Errorf("MAX_HEADER_LIST_SIZE = %d, want 4096", v)
			}
			wu := rc.Next("connection WINDOW_UPDATE", func(f http2.Frame) bool { _, ok := f.(*http2.WindowUpdateFrame); return ok })
			if got := wu.(*http2.WindowUpdateFrame); got.StreamID != 0 || got.Increment != DefaultConnWindowSize-65535 {
				t.Errorf("WINDOW_UPDATE(%d, %d)", got.StreamID, got.Increment)
			}
			rc.Next("SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
		}},
		{"ping", func(t *testing.T, rc *h2raw.Conn) { rc.Ping() }},
		{"unary with padding and CONTINUATION", func(t *testing.T, rc *h2raw.Conn) {
			// Header block split over HEADERS + CONTINUATION.
			block := rc.EncodeHeaders(h2raw.Request(unaryPath, "x-pad", strings.Repeat("p", 300)))
			msg := h2raw.MarshalMessage(t, &testpb.SimpleRequest{Payload: payload(3000)})
			_ = rc.Write(func(fr *http2.Framer) error {
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:10]})
				_ = fr.WriteContinuation(1, false, block[10:100])
				_ = fr.WriteContinuation(1, true, block[100:])
				_ = fr.WriteDataPadded(1, false, msg[:1000], make([]byte, 200))
				return fr.WriteDataPadded(1, true, msg[1000:], make([]byte, 7))
			})
			var got []byte
			var trailers *http2.MetaHeadersFrame
			rc.Next("response", func(f http2.Frame) bool {
				switch f := f.(type) {
				case *http2.DataFrame:
					if f.StreamID == 1 {
						got = append(got, f.Data()...)
					}
				case *http2.MetaHeadersFrame:
					if f.StreamID == 1 && f.StreamEnded() {
						trailers = f
						return true
					}
				}
				return false
			})
			if v := trailers.Fields; len(v) == 0 || v[0].Name != "grpc-status" || v[0].Value != "0" {
				t.Fatalf("trailers %v", trailers.Fields)
			}
			if len(got) < 5 {
				t.Fatalf("response %d bytes", len(got))
			}
			var resp testpb.SimpleResponse
			if err := proto.Unmarshal(got[5:], &resp); err != nil || !bytes.Equal(resp.GetPayload().GetBody(), payload(3000).Body) {
				t.Fatalf("response payload wrong: %v", err)
			}
		}},
		{"non-gRPC content-type gets 415", func(t *testing.T, rc *h2raw.Conn) {
			hf := h2raw.Request(unaryPath)
			hf[4].Value = "text/plain"
			rc.Headers(1, hf, true)
			f := rc.Next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "415" || !f.StreamEnded() {
				t.Fatalf("got :status %q end %v", f.PseudoValue("status"), f.StreamEnded())
			}
		}},
		{"GET gets 405", func(t *testing.T, rc *h2raw.Conn) {
			hf := h2raw.Request(unaryPath)
			hf[0].Value = "GET"
			rc.Headers(1, hf, true)
			f := rc.Next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "405" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
		}},
		{"header list too large", func(t *testing.T, rc *h2raw.Conn) {
			// Each field fits, their sum does not (a single field over the
			// limit is a COMPRESSION connection error in x/net's decoder).
			rc.Headers(1, h2raw.Request(unaryPath, "x-big1", strings.Repeat("b", 2500), "x-big2", strings.Repeat("b", 2500)), true)
			f := rc.Next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "431" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
			rc.Ping()
		}},
		{"malformed grpc-timeout", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(1, h2raw.Request(unaryPath, "grpc-timeout", "soon"), true)
			f := rc.Next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "400" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
		}},
		{"uppercase header name resets the stream only", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(1, h2raw.Request(unaryPath, "X-Upper", "v"), true)
			rc.ExpectRST(1, http2.ErrCodeProtocol)
			rc.Ping()
		}},
		{"DATA on stream 0", func(t *testing.T, rc *h2raw.Conn) {
			_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteData(0, false, []byte("x")) })
			rc.ExpectGoAway(http2.ErrCodeProtocol)
		}},
		{"DATA on idle stream", func(t *testing.T, rc *h2raw.Conn) {
			_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteData(9, false, []byte("x")) })
			rc.ExpectGoAway(http2.ErrCodeProtocol)
		}},
		{"even stream id", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(2, h2raw.Request(unaryPath), true)
			rc.ExpectGoAway(http2.ErrCodeProtocol)
		}},
		{"invalid initial window size", func(t *testing.T, rc *h2raw.Conn) {
			_ = rc.Write(func(fr *http2.Framer) error {
				return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
			})
			rc.ExpectGoAway(http2.ErrCodeFlowControl)
		}},
		{"frame larger than MAX_FRAME_SIZE", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(1, h2raw.Request("/x.Y/Hole"), false)
			_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteData(1, false, make([]byte, 20000)) })
			rc.ExpectGoAway(http2.ErrCodeFrameSize)
		}},
		{"stream window exceeded", func(t *testing.T, rc *h2raw.Conn) {
			// The backend never answers, so meshd forwards nothing and
			// grants no more window than the initial 65535 bytes.
			rc.Headers(1, h2raw.Request("/x.Y/Hole"), false)
			for i := 0; i < 5; i++ {
				_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteData(1, false, make([]byte, 16000)) })
			}
			rc.ExpectRST(1, http2.ErrCodeFlowControl)
			rc.Ping()
		}},
		{"DATA after END_STREAM", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(1, h2raw.Request("/x.Y/Hole"), true)
			_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteData(1, false, []byte{0}) })
			rc.ExpectRST(1, http2.ErrCodeStreamClosed)
		}},
		{"max concurrent streams", func(t *testing.T, rc *h2raw.Conn) {
			rc.Headers(1, h2raw.Request("/x.Y/Hole"), false)
			rc.Headers(3, h2raw.Request("/x.Y/Hole"), false)
			rc.Headers(5, h2raw.Request("/x.Y/Hole"), false)
			rc.ExpectRST(5, http2.ErrCodeRefusedStream)
			// Cancelling one frees a slot.
			_ = rc.Write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
			testkit.WaitFor(t, 5*time.Second, "slot to free", func() bool { return p.srv.Stats().RefusedStreams >= 1 })
			rc.Ping()
		}},
		{"PUSH_PROMISE from client", func(t *testing.T, rc *h2raw.Conn) {
			_ = rc.Write(func(fr *http2.Framer) error {
				return fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
			})
			rc.ExpectGoAway(http2.ErrCodeProtocol)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := h2raw.New(t, p.addr)
			tt.run(t, rc)
		})
	}
	if p.srv.Stats().ProtocolErrors < 6 {
		t.Errorf("ProtocolErrors = %d, want >= 6", p.srv.Stats().ProtocolErrors)
	}
}

// TestBadPreface: a client that does not speak HTTP/2 is disconnected.
func TestBadPreface(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "127.0.0.1:1", Config{})
	nc, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, nc); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed: %v", err)
	}
}

// TestPingFlood: a peer that sends PINGs without reading the ACKs is cut
// off instead of growing meshd's queue without bound.
func TestPingFlood(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "127.0.0.1:1", Config{})
	rc := h2raw.New(t, p.addr)
	deadline := time.Now().Add(10 * time.Second)
	var sent int
	for sent = 0; sent < 2_000_000; sent++ {
		if err := rc.Queue(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{}) }); err != nil || rc.FlushBy(deadline) != nil {
			break
		}
	}
	testkit.WaitFor(t, 5*time.Second, "ENHANCE_YOUR_CALM", func() bool { return p.srv.Stats().ProtocolErrors >= 1 })
	testkit.WaitFor(t, 5*time.Second, "connection to close", func() bool { return p.srv.Stats().ActiveConns == 0 })
	t.Logf("sent %d PINGs", sent)
}

// TestWindowUpdateReleasesBacklog: a client that opens a stream's window
// once, wide, after meshd has queued more for it than one writer batch
// holds, gets the whole response without sending anything else. (The
// reader that flushed the first batch inline used to leave the rest queued
// until some other frame woke the writer.)
func TestWindowUpdateReleasesBacklog(t *testing.T) {
	t.Parallel()
	const size, count = 16 << 10, 60 // 960 KiB: within meshd's 1 MiB stream window, > maxBatchBytes
	resp := &testpb.StreamingOutputCallResponse{Payload: payload(size)}
	b := startBackend(t, &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		for i := 0; i < count; i++ {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
		return nil
	}})
	p := startProxy(t, b.addr, Config{})
	// Stream windows start closed; the connection window is wide open.
	rc := h2raw.New(t, p.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	if err := rc.Write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 64<<20) }); err != nil {
		t.Fatal(err)
	}
	rc.Headers(1, h2raw.Request("/grpc.testing.TestService/StreamingOutputCall"), false)
	if err := rc.Write(func(fr *http2.Framer) error {
		return fr.WriteData(1, true, h2raw.MarshalMessage(t, &testpb.StreamingOutputCallRequest{}))
	}); err != nil {
		t.Fatal(err)
	}
	want := count * len(h2raw.MarshalMessage(t, resp))
	testkit.WaitFor(t, 5*time.Second, "meshd to queue the whole response", func() bool {
		return p.srv.Stats().BufferedBytes >= int64(want)
	})
	if err := rc.Write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(1, uint32(want)) }); err != nil {
		t.Fatal(err)
	}
	var got int
	rc.Next("trailers", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.DataFrame:
			got += len(f.Data())
		case *http2.MetaHeadersFrame:
			return f.StreamEnded()
		}
		return false
	})
	if got != want {
		t.Fatalf("got %d bytes of DATA, want %d", got, want)
	}
}
