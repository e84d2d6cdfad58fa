package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/testkit"
)

// rawClient speaks HTTP/2 frames directly, to exercise what grpc-go clients
// never send.
type rawClient struct {
	t    *testing.T
	nc   net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

func newRawClient(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	rc := &rawClient{t: t, nc: nc}
	rc.fr = http2.NewFramer(nc, nc)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.fr.AllowIllegalWrites = true
	rc.henc = hpack.NewEncoder(&rc.hbuf)
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return rc
}

func grpcRequestHeaders(path string, extra ...string) []hpack.HeaderField {
	hf := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "test"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		hf = append(hf, hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return hf
}

func (rc *rawClient) headers(id uint32, fields []hpack.HeaderField, end bool) {
	rc.t.Helper()
	rc.hbuf.Reset()
	for _, f := range fields {
		if err := rc.henc.WriteField(f); err != nil {
			rc.t.Fatal(err)
		}
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		rc.t.Fatal(err)
	}
}

// next reads frames, answering SETTINGS, until match accepts one.
func (rc *rawClient) next(what string, match func(http2.Frame) bool) http2.Frame {
	rc.t.Helper()
	_ = rc.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", what, err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			_ = rc.fr.WriteSettingsAck()
		}
		if match(f) {
			return f
		}
	}
}

func (rc *rawClient) expectGoAway(code http2.ErrCode) {
	rc.t.Helper()
	f := rc.next("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if got := f.(*http2.GoAwayFrame).ErrCode; got != code {
		rc.t.Fatalf("GOAWAY %v, want %v", got, code)
	}
}

func (rc *rawClient) expectRST(id uint32, code http2.ErrCode) {
	rc.t.Helper()
	f := rc.next("RST_STREAM", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != id || rst.ErrCode != code {
		rc.t.Fatalf("RST_STREAM(%d, %v), want (%d, %v)", rst.StreamID, rst.ErrCode, id, code)
	}
}

// ping checks the connection still answers.
func (rc *rawClient) ping() {
	rc.t.Helper()
	data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := rc.fr.WritePing(false, data); err != nil {
		rc.t.Fatal(err)
	}
	rc.next("PING ACK", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck() && p.Data == data
	})
}

func grpcMessage(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	return append(out, b...)
}

// blackHole accepts TCP connections and never answers, so streams routed to
// it stay pending inside meshd.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestProtocol(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	hole := blackHole(t)
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
		run  func(t *testing.T, rc *rawClient)
	}{
		{"server settings", func(t *testing.T, rc *rawClient) {
			f := rc.next("SETTINGS", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
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
			wu := rc.next("connection WINDOW_UPDATE", func(f http2.Frame) bool { _, ok := f.(*http2.WindowUpdateFrame); return ok })
			if got := wu.(*http2.WindowUpdateFrame); got.StreamID != 0 || got.Increment != DefaultConnWindowSize-65535 {
				t.Errorf("WINDOW_UPDATE(%d, %d)", got.StreamID, got.Increment)
			}
			rc.next("SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
		}},
		{"ping", func(t *testing.T, rc *rawClient) { rc.ping() }},
		{"unary with padding and CONTINUATION", func(t *testing.T, rc *rawClient) {
			// Header block split over HEADERS + CONTINUATION.
			rc.hbuf.Reset()
			for _, f := range grpcRequestHeaders(unaryPath, "x-pad", strings.Repeat("p", 300)) {
				_ = rc.henc.WriteField(f)
			}
			block := append([]byte(nil), rc.hbuf.Bytes()...)
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:10]})
			_ = rc.fr.WriteContinuation(1, false, block[10:100])
			_ = rc.fr.WriteContinuation(1, true, block[100:])
			msg := grpcMessage(t, &testpb.SimpleRequest{Payload: payload(3000)})
			_ = rc.fr.WriteDataPadded(1, false, msg[:1000], make([]byte, 200))
			_ = rc.fr.WriteDataPadded(1, true, msg[1000:], make([]byte, 7))
			var got []byte
			var trailers *http2.MetaHeadersFrame
			rc.next("response", func(f http2.Frame) bool {
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
		{"non-gRPC content-type gets 415", func(t *testing.T, rc *rawClient) {
			hf := grpcRequestHeaders(unaryPath)
			hf[4].Value = "text/plain"
			rc.headers(1, hf, true)
			f := rc.next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "415" || !f.StreamEnded() {
				t.Fatalf("got :status %q end %v", f.PseudoValue("status"), f.StreamEnded())
			}
		}},
		{"GET gets 405", func(t *testing.T, rc *rawClient) {
			hf := grpcRequestHeaders(unaryPath)
			hf[0].Value = "GET"
			rc.headers(1, hf, true)
			f := rc.next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "405" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
		}},
		{"header list too large", func(t *testing.T, rc *rawClient) {
			// Each field fits, their sum does not (a single field over the
			// limit is a COMPRESSION connection error in x/net's decoder).
			rc.headers(1, grpcRequestHeaders(unaryPath, "x-big1", strings.Repeat("b", 2500), "x-big2", strings.Repeat("b", 2500)), true)
			f := rc.next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "431" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
			rc.ping()
		}},
		{"malformed grpc-timeout", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unaryPath, "grpc-timeout", "soon"), true)
			f := rc.next("response HEADERS", func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
			if f.PseudoValue("status") != "400" {
				t.Fatalf("got :status %q", f.PseudoValue("status"))
			}
		}},
		{"uppercase header name resets the stream only", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unaryPath, "X-Upper", "v"), true)
			rc.expectRST(1, http2.ErrCodeProtocol)
			rc.ping()
		}},
		{"DATA on stream 0", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WriteData(0, false, []byte("x"))
			rc.expectGoAway(http2.ErrCodeProtocol)
		}},
		{"DATA on idle stream", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WriteData(9, false, []byte("x"))
			rc.expectGoAway(http2.ErrCodeProtocol)
		}},
		{"even stream id", func(t *testing.T, rc *rawClient) {
			rc.headers(2, grpcRequestHeaders(unaryPath), true)
			rc.expectGoAway(http2.ErrCodeProtocol)
		}},
		{"invalid initial window size", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
			rc.expectGoAway(http2.ErrCodeFlowControl)
		}},
		{"frame larger than MAX_FRAME_SIZE", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders("/x.Y/Hole"), false)
			_ = rc.fr.WriteData(1, false, make([]byte, 20000))
			rc.expectGoAway(http2.ErrCodeFrameSize)
		}},
		{"stream window exceeded", func(t *testing.T, rc *rawClient) {
			// The backend never answers, so meshd forwards nothing and
			// grants no more window than the initial 65535 bytes.
			rc.headers(1, grpcRequestHeaders("/x.Y/Hole"), false)
			for i := 0; i < 5; i++ {
				_ = rc.fr.WriteData(1, false, make([]byte, 16000))
			}
			rc.expectRST(1, http2.ErrCodeFlowControl)
			rc.ping()
		}},
		{"DATA after END_STREAM", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders("/x.Y/Hole"), true)
			_ = rc.fr.WriteData(1, false, []byte{0})
			rc.expectRST(1, http2.ErrCodeStreamClosed)
		}},
		{"max concurrent streams", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders("/x.Y/Hole"), false)
			rc.headers(3, grpcRequestHeaders("/x.Y/Hole"), false)
			rc.headers(5, grpcRequestHeaders("/x.Y/Hole"), false)
			rc.expectRST(5, http2.ErrCodeRefusedStream)
			// Cancelling one frees a slot.
			_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			testkit.WaitFor(t, 5*time.Second, "slot to free", func() bool { return p.srv.Stats().RefusedStreams >= 1 })
			rc.ping()
		}},
		{"PUSH_PROMISE from client", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
			rc.expectGoAway(http2.ErrCodeProtocol)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := newRawClient(t, p.addr)
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
	rc := newRawClient(t, p.addr)
	_ = rc.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var sent int
	for sent = 0; sent < 2_000_000; sent++ {
		if err := rc.fr.WritePing(false, [8]byte{}); err != nil {
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
	rc := newRawClient(t, p.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	if err := rc.fr.WriteWindowUpdate(0, 64<<20); err != nil {
		t.Fatal(err)
	}
	rc.headers(1, grpcRequestHeaders("/grpc.testing.TestService/StreamingOutputCall"), false)
	if err := rc.fr.WriteData(1, true, grpcMessage(t, &testpb.StreamingOutputCallRequest{})); err != nil {
		t.Fatal(err)
	}
	want := count * len(grpcMessage(t, resp))
	testkit.WaitFor(t, 5*time.Second, "meshd to queue the whole response", func() bool {
		return p.srv.Stats().BufferedBytes >= int64(want)
	})
	if err := rc.fr.WriteWindowUpdate(1, uint32(want)); err != nil {
		t.Fatal(err)
	}
	var got int
	rc.next("trailers", func(f http2.Frame) bool {
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
