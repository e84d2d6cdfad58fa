package engine

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// TestGRPCWebOpaque: with Config.GRPCWeb, gRPC-Web requests and CORS
// preflights reach the Director as opaque streams (Request.GRPCWeb) and go
// upstream with their own :method and a body the engine does not read as
// gRPC messages (here, one that would be over MaxRecvMsgSize if it were);
// the response comes back as sent. Without it they get 415 / 405 as
// before, and native gRPC is the same either way.
func TestGRPCWebOpaque(t *testing.T) {
	t.Parallel()
	b := startBackend(t, &testBackend{})

	// The "translator": an h2c net/http server that echoes what it got.
	var hs http.Server
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	hs.Protocols = &protos
	hs.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Content-Type", r.Header.Get("Content-Type"))
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		_, _ = w.Write(body) // not gRPC framing either
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close(); <-served })

	var mu sync.Mutex
	var sawWeb []bool
	route := func(req *Request) (Target, error) {
		mu.Lock()
		sawWeb = append(sawWeb, req.GRPCWeb)
		mu.Unlock()
		if req.GRPCWeb {
			return Target{Addr: ln.Addr().String()}, nil
		}
		return Target{Addr: b.addr}, nil
	}
	web := startProxy(t, b.addr, Config{GRPCWeb: true, MaxRecvMsgSize: 64, MaxSendMsgSize: 64})
	web.route(route)
	plain := startProxy(t, b.addr, Config{MaxRecvMsgSize: 64, MaxSendMsgSize: 64})
	plain.route(route)

	h2c := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	t.Cleanup(h2c.CloseIdleConnections)
	// base64 of 0x00 0x7f 0xff 0xff 0xff ...: as gRPC framing, a message
	// of 2 GiB, far over MaxRecvMsgSize.
	const textBody = "AH////8AAAA="
	do := func(t *testing.T, addr, method, ct string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(ctxT(t, 10e9), method, "http://"+addr+"/grpc.testing.TestService/UnaryCall", strings.NewReader(textBody))
		if err != nil {
			t.Fatal(err)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		req.Header.Set("Origin", "https://app.example")
		resp, err := h2c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}

	tests := []struct {
		name       string
		proxy      *proxy
		method, ct string
		wantStatus int
		wantBody   string // "": not checked
	}{
		{"web text", web, "POST", "application/grpc-web-text", 200, textBody},
		{"web binary", web, "POST", "application/grpc-web", 200, textBody},
		{"web proto", web, "POST", "application/grpc-web+proto", 200, textBody},
		{"web text proto", web, "POST", "application/grpc-web-text+proto", 200, textBody},
		{"preflight", web, "OPTIONS", "", 204, ""},
		{"web look-alike", web, "POST", "application/grpc-webby", 415, ""},
		{"web GET", web, "GET", "application/grpc-web", 415, ""}, // as before: the content type is checked first
		{"plain listener: web", plain, "POST", "application/grpc-web-text", 415, ""},
		{"plain listener: preflight", plain, "OPTIONS", "", 415, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := do(t, tt.proxy.addr, tt.method, tt.ct)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf(":status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if tt.wantStatus >= 400 {
				return
			}
			if got := resp.Header.Get("X-Method"); got != tt.method {
				t.Errorf("translator saw :method %q, want %q", got, tt.method)
			}
			if got := resp.Header.Get("X-Content-Type"); got != tt.ct {
				t.Errorf("translator saw content-type %q, want %q", got, tt.ct)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body %q, want %q", body, tt.wantBody)
			}
		})
	}

	// Native gRPC on the gRPC-Web engine: a gRPC call, not opaque, and
	// still under MaxRecvMsgSize's check.
	mu.Lock()
	sawWeb = nil
	mu.Unlock()
	_, c := dial(t, web.addr)
	if _, err := c.UnaryCall(ctxT(t, 10e9), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("native call: %v", err)
	}
	if _, err := c.UnaryCall(ctxT(t, 10e9), &testpb.SimpleRequest{Payload: payload(1000)}); err == nil || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("native call over MaxRecvMsgSize: %v, want RESOURCE_EXHAUSTED", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, w := range sawWeb {
		if w {
			t.Errorf("a native call reached the Director as GRPCWeb")
		}
	}
}
