package engine

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// misbehavingBackend is a raw HTTP/2 backend whose UnaryCall answers
// break RFC 9113 in the way the request's x-case names, and whose
// FullDuplexCall answers correctly: response HEADERS at once, one message
// and trailers when the client half-closes. Header blocks larger than a
// frame go out as HEADERS plus CONTINUATION frames.
func misbehavingBackend(t *testing.T, cases map[string]func(send func(id uint32, end bool, fields ...string), data func(id uint32, end bool, p []byte), id uint32)) string {
	t.Helper()
	type encoder struct {
		buf bytes.Buffer
		enc *hpack.Encoder
	}
	var mu sync.Mutex
	encs := map[*http2.Framer]*encoder{} // one per connection: HPACK state is the connection's
	return rawFrameBackend(t, func(fr *http2.Framer, f http2.Frame) {
		mu.Lock()
		e := encs[fr]
		if e == nil {
			e = &encoder{}
			e.enc = hpack.NewEncoder(&e.buf)
			encs[fr] = e
		}
		mu.Unlock()
		send := func(id uint32, end bool, fields ...string) {
			e.buf.Reset()
			for i := 0; i+1 < len(fields); i += 2 {
				_ = e.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
			block := e.buf.Bytes()
			first := true
			for first || len(block) > 0 {
				chunk := block[:min(len(block), 16384)]
				block = block[len(chunk):]
				if first {
					_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(block) == 0})
					first = false
				} else {
					_ = fr.WriteContinuation(id, len(block) == 0, chunk)
				}
			}
		}
		data := func(id uint32, end bool, p []byte) { _ = fr.WriteData(id, end, p) }
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			switch f.PseudoValue("path") {
			case "/grpc.testing.TestService/FullDuplexCall":
				send(f.StreamID, false, ":status", "200", "content-type", "application/grpc")
			case "/grpc.testing.TestService/UnaryCall":
				for _, hf := range f.Fields {
					if hf.Name == "x-case" {
						cases[hf.Value](send, data, f.StreamID)
					}
				}
			}
		case *http2.DataFrame:
			if f.StreamEnded() && len(f.Data()) == 0 {
				// The FullDuplexCall's half-close.
				data(f.StreamID, false, []byte{0, 0, 0, 0, 0})
				send(f.StreamID, true, "grpc-status", "0")
			}
		}
	})
}

// TestMalformedResponses: a backend response that RFC 9113 calls
// malformed, or over MaxHeaderListSize, ends that call with INTERNAL and
// a message naming the violation; the backend connection and the other
// call on it carry on.
func TestMalformedResponses(t *testing.T) {
	t.Parallel()
	emptyMsg := []byte{0, 0, 0, 0, 0}
	// Over the limit, in fields spread over HEADERS and CONTINUATION
	// frames, the limit crossed in the fourth of five: a decoder that gave
	// up at the limit would meet a CONTINUATION frame after it, a
	// connection error.
	var big []string
	for i := 0; i < 16; i++ {
		big = append(big, fmt.Sprintf("x-big-%02d", i), strings.Repeat("b", 5000))
	}
	type sendFn = func(id uint32, end bool, fields ...string)
	type dataFn = func(id uint32, end bool, p []byte)
	tests := []struct {
		name string
		send func(send sendFn, data dataFn, id uint32)
		want string
	}{
		{"pseudo-header field in trailers", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc")
			data(id, false, emptyMsg)
			send(id, true, ":status", "200", "grpc-status", "0")
		}, malformedResponse + "pseudo-header field :status in trailers"},
		{"connection-specific field in headers", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc", "connection", "close")
		}, malformedResponse + `connection-specific header field "connection"`},
		{"te in headers", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc", "te", "trailers")
		}, malformedResponse + `connection-specific header field "te"`},
		{"connection-specific field in trailers", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc")
			data(id, false, emptyMsg)
			send(id, true, "grpc-status", "0", "transfer-encoding", "chunked")
		}, malformedResponse + `connection-specific header field "transfer-encoding" in trailers`},
		{"connection-specific field in a trailers-only response", func(send sendFn, data dataFn, id uint32) {
			send(id, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "0", "upgrade", "h2c")
		}, malformedResponse + `connection-specific header field "upgrade"`},
		{"DATA over content-length", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc", "content-length", "3")
			data(id, false, emptyMsg)
		}, malformedResponse + "DATA does not match content-length"},
		{"DATA under content-length", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc", "content-length", "50")
			data(id, false, emptyMsg)
			send(id, true, "grpc-status", "0")
		}, malformedResponse + "DATA does not match content-length"},
		{"content-length on a trailers-only response", func(send sendFn, data dataFn, id uint32) {
			send(id, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "0", "content-length", "5")
		}, malformedResponse + "content-length 5 but no DATA"},
		{"second HEADERS without END_STREAM", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc")
			send(id, false, "grpc-status", "0")
		}, malformedResponse + "second HEADERS without END_STREAM"},
		{"trailers over the header list limit", func(send sendFn, data dataFn, id uint32) {
			send(id, false, ":status", "200", "content-type", "application/grpc")
			data(id, false, emptyMsg)
			send(id, true, append([]string{"grpc-status", "0"}, big...)...)
		}, "meshd: backend response header list of 80"},
		{"headers over the header list limit", func(send sendFn, data dataFn, id uint32) {
			send(id, false, append([]string{":status", "200", "content-type", "application/grpc"}, big...)...)
		}, "bytes is over the limit of 65536"},
	}
	cases := map[string]func(send sendFn, data dataFn, id uint32){}
	for _, tt := range tests {
		cases[tt.name] = tt.send
	}
	addr := misbehavingBackend(t, cases)
	p := startProxy(t, addr, Config{ConnsPerBackend: 1})
	_, c := dial(t, p.addr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A neighbour call on the same backend connection, in the
			// middle of its response.
			ctx := ctxT(t, 10*time.Second)
			hold, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := hold.Header(); err != nil {
				t.Fatalf("neighbour call: %v", err)
			}
			_, err = c.UnaryCall(metadata.AppendToOutgoingContext(ctx, "x-case", tt.name), &testpb.SimpleRequest{})
			if st := status.Convert(err); st.Code() != codes.Internal || !strings.HasPrefix(st.Message(), "meshd: ") || !strings.Contains(st.Message(), tt.want) {
				t.Errorf("call got %v; want INTERNAL naming %q", err, tt.want)
			}
			if r := p.nextResult(t); r.Code != codes.Internal || r.Err == nil {
				t.Errorf("Result %+v; want INTERNAL with an error", r)
			}
			if err := hold.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := hold.Recv(); err != nil {
				t.Fatalf("neighbour call after the malformed response: %v", err)
			}
			if _, err := hold.Recv(); err != io.EOF {
				t.Fatalf("neighbour call's end: %v", err)
			}
			p.nextResult(t)
		})
	}
	if st := p.srv.Stats(); st.ProtocolErrors != 0 || st.UpstreamConns != 1 || st.DialErrors != 0 {
		t.Errorf("the backend connection did not survive: %+v", st)
	}
}
