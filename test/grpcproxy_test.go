package test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec countingCodec wraps
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/grpcproxy"
)

// These tests back the README section "Why not mwitkow/grpc-proxy's
// handler": they run the same backend behind meshd and behind grpc-proxy's
// proxy.TransparentHandler (internal/grpcproxy, wired as its README shows)
// and assert what each does. They pin grpc-proxy's behaviour at the version
// in go.mod: if a later version fixes it, they fail, and the README section
// must change with them.

// countingCodec wraps grpc-go's proto codec and counts, per operation and
// message type, what passes through it.
type countingCodec struct {
	encoding.CodecV2
	mu sync.Mutex
	n  map[string]int // "marshal *emptypb.Empty" → count
}

func newCountingCodec() *countingCodec {
	return &countingCodec{CodecV2: encoding.GetCodecV2("proto"), n: map[string]int{}}
}

func (c *countingCodec) count(op string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[fmt.Sprintf("%s %T", op, v)]++
}

func (c *countingCodec) Marshal(v any) (mem.BufferSlice, error) {
	c.count("marshal", v)
	return c.CodecV2.Marshal(v)
}

func (c *countingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	c.count("unmarshal", v)
	return c.CodecV2.Unmarshal(data, v)
}

func (c *countingCodec) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// grpcProxyFixture is grpc-proxy in front of backendAddr, in process, with a
// counting codec on both of its sides: server (client ↔ proxy) and client
// (proxy ↔ backend).
type grpcProxyFixture struct {
	addr           string
	server, client *countingCodec
}

func startGRPCProxy(t *testing.T, backendAddr string) *grpcProxyFixture {
	t.Helper()
	f := &grpcProxyFixture{server: newCountingCodec(), client: newCountingCodec()}
	cc, err := grpc.NewClient("passthrough:///"+backendAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(f.client)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpcproxy.NewServer(cc, grpc.ForceServerCodecV2(f.server))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
		cc.Close()
	})
	f.addr = l.Addr().String()
	return f
}

// TestGRPCProxyLosesHeadersOfFailedCalls: the backend sends response
// headers (x-backend, x-echo-a; x-header-first makes it send them before
// failing) and then fails the call with no message. meshd forwards the
// headers when the backend sends them; grpc-proxy's handler sends response
// headers to its client only together with the first backend message, so
// the client of a call that fails first never sees them. Both forward the
// status and the trailers.
func TestGRPCProxyLosesHeadersOfFailedCalls(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 1)
	m := startMesh(t, simpleConfig(bs, ""))
	gp := startGRPCProxy(t, bs[0].Addr)
	for _, tc := range []struct {
		name        string
		addr        string
		wantHeaders bool
	}{
		{"meshd", m.Addr, true},
		{"grpc-proxy", gp.addr, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cc := dial(t, tc.addr)
			waitServing(t, cc)
			for _, shape := range []string{"unary", "server-streaming"} {
				var hdr, tr metadata.MD
				ctx := ctxMD(t, "x-fail", "NOT_FOUND", "x-fail-message", "nope", "x-echo-a", "1", "x-header-first", "1")
				c := testpb.NewTestServiceClient(cc)
				var err error
				if shape == "unary" {
					_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
				} else {
					var st testpb.TestService_StreamingOutputCallClient
					if st, err = c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{}); err == nil {
						_, err = st.Recv()
						hdr, _ = st.Header()
						tr = st.Trailer()
					}
				}
				if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "nope" {
					t.Fatalf("%s: err = %v, want NotFound nope", shape, err)
				}
				if got := len(hdr.Get("x-backend")) == 1 && len(hdr.Get("x-echo-a")) == 1; got != tc.wantHeaders {
					t.Errorf("%s: response headers forwarded = %v, want %v (headers %v)", shape, got, tc.wantHeaders, hdr)
				}
				if v := tr.Get("x-echo-a"); len(v) != 1 || v[0] != "1" {
					t.Errorf("%s: trailers lost: %v", shape, tr)
				}
			}
		})
	}
}

// TestGRPCProxyRemarshalsEveryMessage counts what grpc-proxy's codecs see:
// every request and response message is decoded into an *emptypb.Empty
// (its bytes kept as unknown fields) and encoded again, once on each side,
// while meshd forwards DATA frames as they are (there is no codec on its
// data path to count). The payload still arrives intact.
func TestGRPCProxyRemarshalsEveryMessage(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "be", 1)
	gp := startGRPCProxy(t, bs[0].Addr)
	cc := dial(t, gp.addr)
	c := testpb.NewTestServiceClient(cc)
	body := bytes.Repeat([]byte("meshd"), 205)
	resp, err := c.UnaryCall(ctxMD(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.GetPayload().GetBody(), body) {
		t.Fatalf("echo came back as %d bytes", len(resp.GetPayload().GetBody()))
	}
	const msgs = 10
	req := &testpb.StreamingOutputCallRequest{}
	for range msgs {
		req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: 1024})
	}
	st, err := c.StreamingOutputCall(ctxMD(t), req)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := st.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != msgs {
		t.Fatalf("got %d of %d messages", n, msgs)
	}
	// Two calls, each one request; responses: 1 + msgs.
	want := map[string]map[string]int{
		"server side (client ↔ grpc-proxy)": {
			"unmarshal *emptypb.Empty": 2,        // the requests, as they arrive
			"marshal *emptypb.Empty":   1 + msgs, // the responses, as they leave
		},
		"client side (grpc-proxy ↔ backend)": {
			"marshal *emptypb.Empty":   2,        // the requests, as they leave
			"unmarshal *emptypb.Empty": 1 + msgs, // the responses, as they arrive
		},
	}
	for side, got := range map[string]map[string]int{
		"server side (client ↔ grpc-proxy)":  gp.server.counts(),
		"client side (grpc-proxy ↔ backend)": gp.client.counts(),
	} {
		for k, w := range want[side] {
			if got[k] != w {
				t.Errorf("%s: %q × %d, want × %d (all: %v)", side, k, got[k], w, got)
			}
		}
		t.Logf("%s: %v", side, got)
	}
}
