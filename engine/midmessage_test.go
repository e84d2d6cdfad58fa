package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// partialBackend is an HTTP/2 backend (h2raw) that answers every request
// with response HEADERS and the first sent bytes of one gRPC message (a
// SimpleResponse of its whole length), then stays silent: only meshd can end
// the call, or the test, by killing the backend's connections.
type partialBackend struct {
	*testkit.TCPServer
	addr string
	msg  []byte // the whole message, 5-byte prefix included
	sent int    // how much of msg is sent

	// forwarded receives the stream id of a WINDOW_UPDATE for a response
	// stream: meshd returns window only for bytes it has written to the
	// client, so part of the message is then with the client.
	forwarded chan uint32
	// resets receives the codes of RST_STREAM frames from meshd.
	resets chan http2.ErrCode
}

// startPartialBackend serves a message of bodySize payload bytes of which
// sent bytes (prefix included) are sent; sent < 0 sends it whole.
func startPartialBackend(t *testing.T, bodySize, sent int) *partialBackend {
	t.Helper()
	msg := h2raw.MarshalMessage(t, &testpb.SimpleResponse{Payload: payload(bodySize)})
	if sent < 0 || sent > len(msg) {
		sent = len(msg)
	}
	pb := &partialBackend{msg: msg, sent: sent, forwarded: make(chan uint32, 16), resets: make(chan http2.ErrCode, 16)}
	pb.TCPServer = h2raw.StartBackend(t, pb.onFrame)
	pb.addr = pb.Addr()
	return pb
}

// killConns closes every backend connection, as a crashed backend would.
func (pb *partialBackend) killConns() { pb.CloseConns() }

func (pb *partialBackend) onFrame(sc *h2raw.ServerConn, f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.StreamID%2 == 0 || f.PseudoValue("path") == "" {
			return nil // request trailers: none expected
		}
		block := sc.EncodeHeaders(hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
		if err := sc.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block, EndHeaders: true}); err != nil {
			return err
		}
		// meshd's window is at least 65535 (the HTTP/2 default) and its
		// frame size at least 16384.
		for p := pb.msg[:pb.sent]; len(p) > 0; {
			n := min(len(p), 16384)
			if err := sc.WriteData(f.StreamID, false, p[:n]); err != nil {
				return err
			}
			p = p[n:]
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 {
			select {
			case pb.forwarded <- f.StreamID:
			default:
			}
		}
	case *http2.RSTStreamFrame:
		select {
		case pb.resets <- f.ErrCode:
		default:
		}
	}
	return nil
}

// TestEndMidMessage: when meshd ends a call (its deadline, a lost backend)
// while the client holds part of a response message, it resets the client
// stream with RST_STREAM(CANCEL) instead of sending its status, which would
// end the stream inside the message: a grpc-go client would report
// INTERNAL "unexpected EOF". Without a partial message, the status is sent.
func TestEndMidMessage(t *testing.T) {
	t.Parallel()
	const (
		bigBody  = 100 << 10 // message payload; the backend sends only partSent bytes of it
		partSent = 20 << 10  // more than a quarter window: meshd returns WINDOW_UPDATE once it is written
		timeout  = 300 * time.Millisecond
	)
	tests := []struct {
		name           string
		bodySize, sent int
		routeTimeout   time.Duration // meshd's own deadline
		clientTimeout  time.Duration // the client's deadline
		killBackend    bool          // kill the backend once part of the message is with the client
		wantClient     codes.Code
		wantClientMsg  string // substring of the client's status message
		wantResult     []codes.Code
		wantErr        error
		wantResets     int64 // Stats.MidMessageResets
	}{
		{name: "meshd deadline inside a message", bodySize: bigBody, sent: partSent, routeTimeout: timeout, clientTimeout: 10 * time.Second,
			wantClient: codes.Canceled, wantClientMsg: "RST_STREAM", wantResult: []codes.Code{codes.DeadlineExceeded}, wantErr: ErrDeadline, wantResets: 1},
		{name: "meshd deadline after a whole message", bodySize: 100, sent: -1, routeTimeout: timeout, clientTimeout: 10 * time.Second,
			wantClient: codes.DeadlineExceeded, wantClientMsg: "meshd", wantResult: []codes.Code{codes.DeadlineExceeded}, wantErr: ErrDeadline},
		{name: "backend lost inside a message", bodySize: bigBody, sent: partSent, clientTimeout: 10 * time.Second, killBackend: true,
			wantClient: codes.Canceled, wantClientMsg: "RST_STREAM", wantResult: []codes.Code{codes.Unavailable}, wantErr: ErrUpstreamLost, wantResets: 1},
		// Both deadlines expire together, as in most calls: whichever acts
		// first, the client must see DEADLINE_EXCEEDED.
		{name: "client deadline inside a message", bodySize: bigBody, sent: partSent, clientTimeout: timeout,
			wantClient: codes.DeadlineExceeded, wantResult: []codes.Code{codes.DeadlineExceeded, codes.Canceled}, wantResets: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			be := startPartialBackend(t, tt.bodySize, tt.sent)
			p := startProxy(t, be.addr, Config{InitialWindowSize: 65535})
			p.route(func(*Request) (Target, error) { return Target{Addr: be.addr, Timeout: tt.routeTimeout}, nil })
			_, c := dial(t, p.addr)
			ctx, cancel := context.WithTimeout(context.Background(), tt.clientTimeout)
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
				errc <- err
			}()
			if tt.killBackend {
				select {
				case <-be.forwarded:
				case <-time.After(5 * time.Second):
					t.Fatal("meshd returned no window for the partial message")
				}
				be.killConns()
			}
			var err error
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				t.Fatal("call did not end")
			}
			st := status.Convert(err)
			if st.Code() != tt.wantClient || !strings.Contains(st.Message(), tt.wantClientMsg) {
				t.Fatalf("client got %v, want %v (%q)", err, tt.wantClient, tt.wantClientMsg)
			}
			r := p.nextResult(t)
			if !containsCode(tt.wantResult, r.Code) || (tt.wantErr != nil && !errors.Is(r.Err, tt.wantErr)) || !r.Committed {
				t.Fatalf("result %+v, want code in %v, err %v, committed", r, tt.wantResult, tt.wantErr)
			}
			if got := p.srv.Stats().MidMessageResets; tt.wantResets >= 0 && got != tt.wantResets {
				t.Fatalf("MidMessageResets = %d, want %d", got, tt.wantResets)
			}
		})
	}
}

func containsCode(cs []codes.Code, c codes.Code) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// TestEndMidMessageWire checks the frames themselves: after response
// HEADERS and part of a message, meshd's deadline ends the client stream
// with RST_STREAM(CANCEL) and no trailers, and cancels the backend stream.
func TestEndMidMessageWire(t *testing.T) {
	t.Parallel()
	be := startPartialBackend(t, 100<<10, 20<<10)
	p := startProxy(t, be.addr, Config{})
	rc := h2raw.New(t, p.addr)
	rc.Headers(1, h2raw.Request("/grpc.testing.TestService/UnaryCall", "grpc-timeout", "300m"), false)
	if err := rc.Write(func(fr *http2.Framer) error {
		return fr.WriteData(1, true, h2raw.MarshalMessage(t, &testpb.SimpleRequest{}))
	}); err != nil {
		t.Fatal(err)
	}
	var got []byte
	f := rc.Next("end of stream 1", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamID == 1 {
				got = append(got, f.Data()...)
			}
			return f.StreamID == 1 && f.StreamEnded()
		case *http2.MetaHeadersFrame:
			return f.StreamID == 1 && f.StreamEnded()
		case *http2.RSTStreamFrame:
			return f.StreamID == 1
		}
		return false
	})
	if !bytes.Equal(got, be.msg[:be.sent]) {
		t.Fatalf("client got %d bytes of DATA before the end, want the %d the backend sent", len(got), be.sent)
	}
	switch f := f.(type) {
	case *http2.RSTStreamFrame:
		if f.ErrCode != http2.ErrCodeCancel {
			t.Fatalf("RST_STREAM(%v), want CANCEL", f.ErrCode)
		}
	case *http2.MetaHeadersFrame:
		t.Fatalf("stream ended with HEADERS %v inside a message, want RST_STREAM(CANCEL)", f.Fields)
	default:
		t.Fatalf("stream ended with %v, want RST_STREAM(CANCEL)", f)
	}
	select {
	case code := <-be.resets:
		if code != http2.ErrCodeCancel {
			t.Fatalf("backend stream reset with %v, want CANCEL", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend stream not reset")
	}
	if r := p.nextResult(t); r.Code != codes.DeadlineExceeded || !errors.Is(r.Err, ErrDeadline) {
		t.Fatalf("result %+v", r)
	}
	rc.Ping() // the connection is still usable
}

// TestMsgTrackerAdvance: advance and inMessage find message boundaries
// wherever DATA splits the stream, prefixes included.
func TestMsgTrackerAdvance(t *testing.T) {
	t.Parallel()
	var stream []byte
	boundary := map[int]bool{0: true}
	for _, n := range []int{0, 1, 4, 5, 300, 70000, 0, 17} {
		var pre [5]byte
		binary.BigEndian.PutUint32(pre[1:], uint32(n))
		stream = append(stream, pre[:]...)
		stream = append(stream, make([]byte, n)...)
		boundary[len(stream)] = true
	}
	for _, chunk := range []int{1, 2, 3, 5, 6, 7, 1000, 16384, len(stream)} {
		var m msgTracker
		for off := 0; off < len(stream); {
			n := min(chunk, len(stream)-off)
			m.advance(stream[off : off+n])
			off += n
			if m.inMessage() == boundary[off] {
				t.Fatalf("chunk %d: after %d bytes inMessage = %v, want %v", chunk, off, m.inMessage(), !boundary[off])
			}
		}
		// 8 messages: 8 prefixes, however the bytes were cut.
		if m.prefixBytes != 8*5 {
			t.Fatalf("chunk %d: prefixBytes = %d, want 40", chunk, m.prefixBytes)
		}
	}
}
