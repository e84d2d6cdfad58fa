package engine

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// rfcAnswer is the frame meshd must answer a protocol violation with: the
// first RST_STREAM or GOAWAY it sends after the violation, or neither
// (ignored): the violation is discarded, and the connection answers a
// later request without resetting anything.
type rfcAnswer struct {
	kind   http2.FrameType // FrameRSTStream or FrameGoAway; 0 (DATA): neither
	code   http2.ErrCode
	stream uint32 // RST_STREAM: its stream
	last   uint32 // GOAWAY: its last stream id, when not 0
}

func rstOn(id uint32, code http2.ErrCode) rfcAnswer {
	return rfcAnswer{kind: http2.FrameRSTStream, code: code, stream: id}
}

func goAwayWith(code http2.ErrCode, last uint32) rfcAnswer {
	return rfcAnswer{kind: http2.FrameGoAway, code: code, last: last}
}

var ignored = rfcAnswer{}

// block HPACK-encodes fields with the client's encoder (whose table the
// connection shares).
func (rc *rawClient) block(fields []hpack.HeaderField) []byte {
	return rc.EncodeHeaders(fields)
}

// response waits for the END_STREAM of stream id's response (HEADERS or
// DATA), failing on an RST_STREAM or GOAWAY first.
func (rc *rawClient) response(id uint32) {
	rc.t.Helper()
	rc.next("end of the response", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			rc.t.Fatalf("RST_STREAM(%d, %v) before the response of stream %d ended", f.StreamID, f.ErrCode, id)
		case *http2.GoAwayFrame:
			rc.t.Fatalf("GOAWAY %v before the response of stream %d ended", f.ErrCode, id)
		case *http2.MetaHeadersFrame:
			return f.StreamID == id && f.StreamEnded()
		case *http2.DataFrame:
			return f.StreamID == id && f.StreamEnded()
		}
		return false
	})
}

// expect checks meshd's answer. For an ignored violation it opens stream
// probe with a request meshd answers at once (415) and waits for that
// answer: frames meshd queued before it for the earlier streams are
// written first, so an RST_STREAM or GOAWAY would have shown by then.
func (rc *rawClient) expect(want rfcAnswer, probe uint32) {
	rc.t.Helper()
	if want == ignored {
		hf := grpcRequestHeaders("/x.Y/Probe")
		hf[4].Value = "text/plain"
		rc.headers(probe, hf, true)
		rc.response(probe)
		return
	}
	f := rc.next("RST_STREAM or GOAWAY", func(f http2.Frame) bool {
		switch f.(type) {
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return true
		}
		return false
	})
	switch f := f.(type) {
	case *http2.RSTStreamFrame:
		if want.kind != http2.FrameRSTStream || f.StreamID != want.stream || f.ErrCode != want.code {
			rc.t.Fatalf("got RST_STREAM(%d, %v); want %+v", f.StreamID, f.ErrCode, want)
		}
		rc.ping() // a stream error leaves the connection up
	case *http2.GoAwayFrame:
		if want.kind != http2.FrameGoAway || f.ErrCode != want.code || (want.last != 0 && f.LastStreamID != want.last) {
			rc.t.Fatalf("got GOAWAY(last %d, %v, %q); want %+v", f.LastStreamID, f.ErrCode, f.DebugData(), want)
		}
	}
}

// TestRFC9113 runs each protocol violation of issue 14 as a raw-frame
// exchange and checks the exact frame and error code meshd answers with.
// Streams to /x.Y/Hole go to a backend that never answers, so they stay
// open (or half-closed) as long as the test needs.
func TestRFC9113(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})
	hole := blackHole(t)
	p := startProxy(t, b.addr, Config{MaxConcurrentStreams: 3, DialTimeout: 5 * time.Second})
	var smuggled atomic.Int32
	p.route(func(req *Request) (Target, error) {
		switch {
		case strings.HasSuffix(req.Method, "/Hole"):
			return Target{Addr: hole}, nil
		case strings.HasSuffix(req.Method, "/Smuggle"):
			smuggled.Add(1)
		}
		return Target{Addr: b.addr}, nil
	})
	const (
		unary = "/grpc.testing.TestService/UnaryCall"
		hole1 = "/x.Y/Hole"
		max31 = 1<<31 - 1
	)
	open := func(rc *rawClient, id uint32, end bool) { rc.headers(id, grpcRequestHeaders(hole1), end) }
	// early opens stream id with a request meshd answers at once (415)
	// without ending it, and waits for the answer: the stream is then
	// half-closed (local), its call done.
	early := func(rc *rawClient, id uint32) {
		hf := grpcRequestHeaders(unary)
		hf[4].Value = "text/plain"
		rc.headers(id, hf, false)
		rc.response(id)
	}
	msg := func(t *testing.T) []byte { return grpcMessage(t, &testpb.SimpleRequest{}) }

	tests := []struct {
		name string
		send func(t *testing.T, rc *rawClient)
		want rfcAnswer
	}{
		// §5.1.1
		{"5.1.1 new stream id lower than one used", func(t *testing.T, rc *rawClient) {
			open(rc, 5, true)
			open(rc, 3, true)
		}, goAwayWith(http2.ErrCodeProtocol, 5)},
		{"5.1.1 HEADERS reusing a closed stream's id, forgotten", func(t *testing.T, rc *rawClient) {
			for id := uint32(1); id <= 2*closedMemory+1; id += 2 {
				rc.headers(id, grpcRequestHeaders(unary), false)
				_ = rc.fr.WriteData(id, true, msg(t))
				rc.response(id)
			}
			open(rc, 1, true)
		}, goAwayWith(http2.ErrCodeProtocol, 2*closedMemory+1)},
		// §5.1 half-closed (remote)
		{"5.1 HEADERS on a half-closed (remote) stream", func(t *testing.T, rc *rawClient) {
			open(rc, 1, true)
			open(rc, 1, true)
		}, rstOn(1, http2.ErrCodeStreamClosed)},
		{"5.1 DATA on a half-closed (remote) stream", func(t *testing.T, rc *rawClient) {
			open(rc, 1, true)
			_ = rc.fr.WriteData(1, true, []byte("x"))
		}, rstOn(1, http2.ErrCodeStreamClosed)},
		// §5.1 closed by the client's RST_STREAM: stream errors.
		{"5.1 HEADERS after the client's RST_STREAM", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			open(rc, 1, true)
		}, rstOn(1, http2.ErrCodeStreamClosed)},
		{"5.1 DATA after the client's RST_STREAM", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			_ = rc.fr.WriteData(1, true, []byte("test"))
		}, rstOn(1, http2.ErrCodeStreamClosed)},
		{"5.1 DATA after the client's RST_STREAM crossed meshd's", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unary, "connection", "close"), false)
			rc.expect(rstOn(1, http2.ErrCodeProtocol), 0)
			_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			_ = rc.fr.WriteData(1, true, []byte("test"))
		}, rstOn(1, http2.ErrCodeStreamClosed)},
		// §5.1 closed after END_STREAM both ways: connection errors.
		{"5.1 HEADERS on a closed stream", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unary), false)
			_ = rc.fr.WriteData(1, true, msg(t))
			rc.response(1)
			open(rc, 1, true)
		}, goAwayWith(http2.ErrCodeStreamClosed, 1)},
		{"5.1 DATA on a closed stream", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unary), false)
			_ = rc.fr.WriteData(1, true, msg(t))
			rc.response(1)
			_ = rc.fr.WriteData(1, true, []byte("x"))
		}, goAwayWith(http2.ErrCodeStreamClosed, 1)},
		// §5.1 closed by meshd's RST_STREAM: what the client had sent
		// before it saw the reset is discarded.
		{"5.1 frames after meshd's RST_STREAM are ignored", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unary, "upgrade", "h2c"), false)
			rc.expect(rstOn(1, http2.ErrCodeProtocol), 0)
			_ = rc.fr.WriteData(1, false, []byte("test"))
			rc.headers(1, []hpack.HeaderField{{Name: "x-trailer", Value: "1"}}, true)
			_ = rc.fr.WriteWindowUpdate(1, 100)
		}, ignored},
		{"5.1 frames after a refusal are ignored", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			open(rc, 3, false)
			open(rc, 5, false)
			open(rc, 7, false)
			rc.expect(rstOn(7, http2.ErrCodeRefusedStream), 0)
			_ = rc.fr.WriteData(7, true, []byte("test"))
			_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel) // room for the probe
		}, ignored},
		// §5.1.2
		{"5.1.2 HEADERS beyond MAX_CONCURRENT_STREAMS", func(t *testing.T, rc *rawClient) {
			open(rc, 1, true)
			open(rc, 3, false)
			open(rc, 5, true)
			open(rc, 7, true)
		}, rstOn(7, http2.ErrCodeRefusedStream)},
		// §5.3.1
		{"5.3.1 HEADERS depending on its own stream", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.block(grpcRequestHeaders(unary)),
				EndStream: true, EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 1, Weight: 255}})
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"5.3.1 PRIORITY depending on its own idle stream", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WritePriority(3, http2.PriorityParam{StreamDep: 3, Weight: 255})
		}, rstOn(3, http2.ErrCodeProtocol)},
		{"5.3.1 PRIORITY depending on its own open stream", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1})
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"5.3.1 PRIORITY on another stream is ignored", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WritePriority(1, http2.PriorityParam{StreamDep: 3})
		}, ignored},
		// §6.9, §6.9.1
		{"6.9 WINDOW_UPDATE of 0 on a stream", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WriteWindowUpdate(1, 0)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"6.9.1 stream window above 2^31-1", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WriteWindowUpdate(1, max31)
			_ = rc.fr.WriteWindowUpdate(1, max31)
		}, rstOn(1, http2.ErrCodeFlowControl)},
		{"6.9.1 stream window above 2^31-1 after an early answer", func(t *testing.T, rc *rawClient) {
			early(rc, 1)
			_ = rc.fr.WriteWindowUpdate(1, max31)
		}, rstOn(1, http2.ErrCodeFlowControl)},
		{"6.9.1 connection window above 2^31-1", func(t *testing.T, rc *rawClient) {
			_ = rc.fr.WriteWindowUpdate(0, max31)
			_ = rc.fr.WriteWindowUpdate(0, max31)
		}, goAwayWith(http2.ErrCodeFlowControl, 0)},
		// §8.1
		{"8.1 second HEADERS without END_STREAM", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			_ = rc.fr.WriteData(1, false, msg(t))
			rc.headers(1, []hpack.HeaderField{{Name: "x-test", Value: "ok"}}, false)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1 second HEADERS without END_STREAM after an early answer", func(t *testing.T, rc *rawClient) {
			early(rc, 1)
			rc.headers(1, []hpack.HeaderField{{Name: "x-test", Value: "ok"}}, false)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1 pseudo-header field in trailers", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			rc.headers(1, []hpack.HeaderField{{Name: ":path", Value: "/x"}, {Name: "x-test", Value: "ok"}}, true)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1 connection-specific field in trailers", func(t *testing.T, rc *rawClient) {
			open(rc, 1, false)
			rc.headers(1, []hpack.HeaderField{{Name: "transfer-encoding", Value: "chunked"}}, true)
		}, rstOn(1, http2.ErrCodeProtocol)},
		// §8.1.1 content-length
		{"8.1.1 content-length above the DATA", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(hole1, "content-length", "10"), false)
			_ = rc.fr.WriteData(1, true, []byte("test"))
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1.1 content-length below the DATA", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(hole1, "content-length", "1"), false)
			_ = rc.fr.WriteData(1, false, []byte("te"))
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1.1 content-length below the sum of the DATA", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(hole1, "content-length", "6"), false)
			_ = rc.fr.WriteData(1, false, []byte("test"))
			_ = rc.fr.WriteData(1, true, []byte("test"))
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1.1 content-length and END_STREAM on HEADERS", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(hole1, "content-length", "5"), true)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1.1 content-length not a number", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(hole1, "content-length", "-1"), false)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.1.1 content-length matching the DATA is served", func(t *testing.T, rc *rawClient) {
			m := msg(t)
			rc.headers(1, grpcRequestHeaders(unary, "content-length", "5"), false)
			_ = rc.fr.WriteData(1, true, m)
			rc.response(1)
		}, ignored},
		{"8.1.1 content-length mismatch after an early answer", func(t *testing.T, rc *rawClient) {
			hf := grpcRequestHeaders(unary, "content-length", "1")
			hf[4].Value = "text/plain"
			rc.headers(1, hf, false)
			rc.response(1)
			_ = rc.fr.WriteData(1, true, []byte("test"))
		}, rstOn(1, http2.ErrCodeProtocol)},
		// §8.3.1
		{"8.3.1 :path empty", func(t *testing.T, rc *rawClient) {
			hf := grpcRequestHeaders(unary)
			hf[2].Value = ""
			rc.headers(1, hf, true)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.3.1 no :method", func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders(unary)[1:], true)
		}, rstOn(1, http2.ErrCodeProtocol)},
		{"8.3.1 :status in a request", func(t *testing.T, rc *rawClient) {
			hf := append([]hpack.HeaderField{{Name: ":status", Value: "200"}}, grpcRequestHeaders(unary)...)
			rc.headers(1, hf, true)
		}, rstOn(1, http2.ErrCodeProtocol)},
	}
	// §8.2.2: each connection-specific field makes the request malformed;
	// none reaches the Director (so no backend).
	for _, f := range [][2]string{
		{"connection", "keep-alive"}, {"keep-alive", "timeout=5"}, {"proxy-connection", "keep-alive"},
		{"transfer-encoding", "chunked"}, {"upgrade", "websocket"}, {"te", "trailers, deflate"}, {"te", "gzip"},
	} {
		tests = append(tests, struct {
			name string
			send func(t *testing.T, rc *rawClient)
			want rfcAnswer
		}{"8.2.2 " + f[0] + ": " + f[1], func(t *testing.T, rc *rawClient) {
			rc.headers(1, grpcRequestHeaders("/x.Y/Smuggle", f[0], f[1]), false)
			_ = rc.fr.WriteData(1, true, msg(t))
		}, rstOn(1, http2.ErrCodeProtocol)})
	}
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				rc := newRawClient(t, p.addr)
				tt.send(t, rc)
				rc.expect(tt.want, 99)
			})
		}
	})
	if n := smuggled.Load(); n != 0 {
		t.Errorf("%d requests with connection-specific fields reached the Director", n)
	}
}

// TestResponseEndConfirmedByPing: when a response ends while the client
// is still sending, meshd writes a PING after it and resets the stream
// (NO_ERROR) only once the client acknowledges the PING (closed.go);
// until then the stream is checked as half-closed (local).
func TestResponseEndConfirmedByPing(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "127.0.0.1:1", Config{})
	rc := newRawClient(t, p.addr)
	hf := grpcRequestHeaders("/grpc.testing.TestService/UnaryCall")
	hf[4].Value = "text/plain" // answered at once: 415
	rc.headers(1, hf, false)
	ended := false
	f := rc.next("meshd's PING", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			ended = ended || (f.StreamID == 1 && f.StreamEnded())
		case *http2.RSTStreamFrame:
			t.Fatalf("RST_STREAM(%d, %v) before the PING was acknowledged", f.StreamID, f.ErrCode)
		case *http2.PingFrame:
			return !f.IsAck()
		}
		return false
	}).(*http2.PingFrame)
	if !ended || string(f.Data[:]) != endPing {
		t.Fatalf("PING %q, response ended before it: %v", f.Data[:], ended)
	}
	// The stream is still open on meshd's side: DATA is accepted...
	_ = rc.fr.WriteData(1, false, []byte("more"))
	rc.expect(ignored, 3)
	// ...and once the client has seen the response, meshd asks it to stop.
	if err := rc.fr.WritePing(true, f.Data); err != nil {
		t.Fatal(err)
	}
	rc.expect(rstOn(1, http2.ErrCodeNo), 0)
}
