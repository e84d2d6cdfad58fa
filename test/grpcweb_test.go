package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// webConfig is simpleConfig with grpc_web on the listener.
func webConfig(bs []*backend.Backend, listenerExtra string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - name: main
    address: 127.0.0.1:0
    grpc_web: {allow_origins: ["http://app.example"]}
%s
drain_timeout: 5s
routes:
  - name: all
    match: {prefix: /}
    cluster: backends
clusters:
  - name: backends
    endpoints: %s
`, listenerExtra, addrs(bs))
}

// webReply is a parsed gRPC-Web response.
type webReply struct {
	resp     *http.Response
	messages [][]byte
	trailer  map[string]string
}

// code is the call's status: in the trailer frame, or in the headers of
// a trailers-only response.
func (r *webReply) code() codes.Code {
	s := r.trailer["grpc-status"]
	if s == "" {
		s = r.resp.Header.Get("Grpc-Status")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return codes.Code(999)
	}
	return codes.Code(n)
}

func (r *webReply) message() string {
	if m, ok := r.trailer["grpc-message"]; ok {
		return m
	}
	return r.resp.Header.Get("Grpc-Message")
}

// webFrame is one gRPC-Web frame.
func webFrame(flag byte, msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	b[0] = flag
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// webCall posts body (already framed) with content type ct and parses
// the response. A text content type base64-encodes body and decodes the
// response.
func webCall(t testing.TB, c *http.Client, url, path, ct string, body []byte, hdr map[string]string) *webReply {
	t.Helper()
	text := strings.HasPrefix(ct, "application/grpc-web-text")
	if text {
		body = []byte(base64.StdEncoding.EncodeToString(body))
	}
	req, err := http.NewRequest(http.MethodPost, url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("X-Grpc-Web", "1")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	r := &webReply{resp: resp, trailer: map[string]string{}}
	if text && len(raw) > 0 {
		raw = decodeChunkedBase64(t, raw)
	}
	for len(raw) > 0 {
		if len(raw) < 5 {
			t.Fatalf("response: %d stray bytes", len(raw))
		}
		n := binary.BigEndian.Uint32(raw[1:5])
		msg := raw[5 : 5+n]
		if raw[0]&0x80 != 0 {
			for _, line := range strings.Split(strings.TrimSpace(string(msg)), "\r\n") {
				k, v, _ := strings.Cut(line, ": ")
				r.trailer[k] = v
			}
			if len(raw) != int(5+n) {
				t.Fatalf("response: %d bytes after the trailer frame", len(raw)-int(5+n))
			}
		} else {
			r.messages = append(r.messages, msg)
		}
		raw = raw[5+n:]
	}
	return r
}

// decodeChunkedBase64 decodes padded base64 chunks written one after the
// other.
func decodeChunkedBase64(t testing.TB, s []byte) []byte {
	t.Helper()
	var out []byte
	for len(s) > 0 {
		end := len(s)
		if i := bytes.IndexByte(s, '='); i >= 0 {
			end = (i/4 + 1) * 4
		}
		b, err := base64.StdEncoding.DecodeString(string(s[:end]))
		if err != nil {
			t.Fatalf("base64 response: %v", err)
		}
		out, s = append(out, b...), s[end:]
	}
	return out
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// h1Client is an HTTP/1.1 client (keep-alive on).
func h1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
}

// checkUnaryAndStream runs a unary and a server-streaming call in ct
// through url and checks what comes back.
func checkUnaryAndStream(t *testing.T, c *http.Client, url, ct string) {
	t.Helper()
	req := mustMarshal(t, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello web")}})
	r := webCall(t, c, url, "/grpc.testing.TestService/UnaryCall", ct, webFrame(0, req), nil)
	if r.resp.StatusCode != 200 || r.code() != codes.OK || len(r.messages) != 1 {
		t.Fatalf("unary %s: HTTP %d, status %v %q, %d messages", ct, r.resp.StatusCode, r.code(), r.message(), len(r.messages))
	}
	if got := r.resp.Header.Get("Content-Type"); got != ct {
		t.Errorf("unary %s: response content-type %q", ct, got)
	}
	var out testpb.SimpleResponse
	if err := proto.Unmarshal(r.messages[0], &out); err != nil || string(out.GetPayload().GetBody()) != "hello web" {
		t.Fatalf("unary %s: response %v, %v", ct, &out, err)
	}
	if r.resp.Header.Get("X-Backend") == "" {
		t.Errorf("unary %s: response metadata x-backend missing (headers %v)", ct, r.resp.Header)
	}

	sreq := mustMarshal(t, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 2}, {Size: 3}}})
	r = webCall(t, c, url, "/grpc.testing.TestService/StreamingOutputCall", ct, webFrame(0, sreq), nil)
	if r.code() != codes.OK || len(r.messages) != 3 {
		t.Fatalf("stream %s: status %v %q, %d messages", ct, r.code(), r.message(), len(r.messages))
	}
	for i, m := range r.messages {
		var sr testpb.StreamingOutputCallResponse
		if err := proto.Unmarshal(m, &sr); err != nil || len(sr.GetPayload().GetBody()) != i+1 {
			t.Fatalf("stream %s: message %d: %v %v", ct, i, &sr, err)
		}
	}
	if r.resp.ProtoMajor == 1 && len(r.resp.TransferEncoding) == 0 {
		t.Errorf("stream %s: HTTP/1.1 response not chunked", ct)
	}

	// A backend's error status (trailers-only natively) reaches the client.
	ereq := mustMarshal(t, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}})
	r = webCall(t, c, url, "/grpc.testing.TestService/UnaryCall", ct, webFrame(0, ereq), nil)
	if r.code() != codes.NotFound || r.message() != "no such thing" {
		t.Fatalf("error %s: status %v %q", ct, r.code(), r.message())
	}
}

// TestGRPCWebHTTP1: binary and text, unary and server streaming, over
// HTTP/1.1 with keep-alive, on a listener that serves native gRPC too.
func TestGRPCWebHTTP1(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "web", 1)
	m := startObserved(t, webConfig(bs, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc) // native gRPC on the grpc_web listener
	c := h1Client()
	url := "http://" + m.Addr
	for _, ct := range []string{"application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text", "application/grpc-web-text+proto"} {
		t.Run(ct, func(t *testing.T) { checkUnaryAndStream(t, c, url, ct) })
	}

	// Keep-alive: the next call reuses the connection.
	reused := false
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/grpc.testing.TestService/EmptyCall", bytes.NewReader(webFrame(0, nil)))
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !reused || resp.ProtoMajor != 1 {
		t.Errorf("HTTP/%d.%d, connection reused %v; want HTTP/1.1 keep-alive", resp.ProtoMajor, resp.ProtoMinor, reused)
	}

	// Native gRPC still works beside it, and the translated calls are
	// counted as gRPC-Web.
	if _, err := testpb.NewTestServiceClient(cc).EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatalf("native call on the grpc_web listener: %v", err)
	}
	mt := scrapeMetrics(t, m.Admin)
	if v := mt.Value(t, "meshd_grpc_web_requests_total", map[string]string{"route": "all", "grpc_code": "OK"}); v < 9 {
		t.Errorf("meshd_grpc_web_requests_total{OK} = %v, want >= 9", v)
	}
}

// TestGRPCWebCORS: preflights from an allowed origin are answered with
// what gRPC-Web clients need; others are refused, and so are their calls.
func TestGRPCWebCORS(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "cors", 1)
	m := startMesh(t, webConfig(bs, ""))
	waitServing(t, dial(t, m.Addr))
	c := h1Client()
	url := "http://" + m.Addr + "/grpc.testing.TestService/UnaryCall"
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, url, nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web,x-user-agent,grpc-timeout,x-tenant")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := preflight("http://app.example")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" {
		t.Fatalf("allowed preflight: %d %v", resp.StatusCode, resp.Header)
	}
	allowed := resp.Header.Get("Access-Control-Allow-Headers")
	for _, h := range []string{"x-grpc-web", "x-user-agent", "grpc-timeout", "content-type", "x-tenant"} {
		if !strings.Contains(allowed, h) {
			t.Errorf("Access-Control-Allow-Headers %q lacks %s", allowed, h)
		}
	}
	if e := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(e, "grpc-status") || !strings.Contains(e, "grpc-message") {
		t.Errorf("Access-Control-Expose-Headers %q", e)
	}
	if !strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("Access-Control-Allow-Methods %q", resp.Header.Get("Access-Control-Allow-Methods"))
	}

	resp = preflight("http://evil.example")
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("refused preflight: %d %v", resp.StatusCode, resp.Header)
	}

	req := mustMarshal(t, &testpb.SimpleRequest{})
	r := webCall(t, c, "http://"+m.Addr, "/grpc.testing.TestService/UnaryCall", "application/grpc-web+proto", webFrame(0, req), map[string]string{"Origin": "http://evil.example"})
	if r.resp.StatusCode != http.StatusForbidden || r.code() != codes.PermissionDenied {
		t.Fatalf("call from a refused origin: HTTP %d, %v", r.resp.StatusCode, r.code())
	}
	r = webCall(t, c, "http://"+m.Addr, "/grpc.testing.TestService/UnaryCall", "application/grpc-web+proto", webFrame(0, req), map[string]string{"Origin": "http://app.example"})
	if r.code() != codes.OK || r.resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" || !strings.Contains(r.resp.Header.Get("Access-Control-Expose-Headers"), "grpc-status") {
		t.Fatalf("call from an allowed origin: %v %v", r.code(), r.resp.Header)
	}
	// Same origin needs no allow_origins entry.
	r = webCall(t, c, "http://"+m.Addr, "/grpc.testing.TestService/UnaryCall", "application/grpc-web+proto", webFrame(0, req), map[string]string{"Origin": "http://" + m.Addr})
	if r.code() != codes.OK {
		t.Fatalf("same-origin call: %v %q", r.code(), r.message())
	}
}

// TestGRPCWebBadInput: malformed bodies get a clear status on a
// connection that stays usable; a 10 MiB header gets 431 and the
// connection is closed; meshd serves others throughout.
func TestGRPCWebBadInput(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "bad", 1)
	m := startMesh(t, webConfig(bs, ""))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	c := h1Client()
	url := "http://" + m.Addr
	const path = "/grpc.testing.TestService/UnaryCall"
	good := webFrame(0, mustMarshal(t, &testpb.SimpleRequest{}))

	cases := []struct {
		name     string
		ct       string
		body     []byte
		raw      bool // body sent as is in text mode
		httpCode int
		code     codes.Code
	}{
		{"truncated frame", "application/grpc-web+proto", webFrame(0, []byte("abcdef"))[:8], false, 400, codes.InvalidArgument},
		{"short prefix", "application/grpc-web+proto", []byte{0, 0, 0}, false, 400, codes.InvalidArgument},
		{"trailer flag in request", "application/grpc-web+proto", webFrame(0x80, nil), false, 400, codes.InvalidArgument},
		{"truncated base64", "application/grpc-web-text", []byte(base64.StdEncoding.EncodeToString(good)[:7]), true, 400, codes.InvalidArgument},
		{"not base64", "application/grpc-web-text", []byte("!!!!"), true, 400, codes.InvalidArgument},
		{"client streaming", "application/grpc-web+proto", append(append([]byte{}, good...), good...), false, 200, codes.Unimplemented},
		{"not grpc-web", "text/plain", good, false, 415, codes.InvalidArgument},
	}
	for _, tc := range cases {
		body := tc.body
		ct := tc.ct
		hdr := map[string]string(nil)
		if tc.raw {
			// Sent verbatim: webCall would encode it.
			req, _ := http.NewRequest(http.MethodPost, url+path, bytes.NewReader(body))
			req.Header.Set("Content-Type", ct)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.httpCode || resp.Header.Get("Grpc-Status") != strconv.Itoa(int(tc.code)) || resp.Header.Get("Grpc-Message") == "" {
				t.Errorf("%s: HTTP %d grpc-status %q %q", tc.name, resp.StatusCode, resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"))
			}
			continue
		}
		r := webCall(t, c, url, path, ct, body, hdr)
		if r.resp.StatusCode != tc.httpCode || r.code() != tc.code || r.message() == "" {
			t.Errorf("%s: HTTP %d, %v %q; want HTTP %d, %v", tc.name, r.resp.StatusCode, r.code(), r.message(), tc.httpCode, tc.code)
		}
	}
	// The same keep-alive connection still serves a good call.
	if r := webCall(t, c, url, path, "application/grpc-web+proto", good, nil); r.code() != codes.OK {
		t.Fatalf("good call after bad ones: %v %q", r.code(), r.message())
	}

	// A 10 MiB header: 431, and the connection is closed.
	nc, err := net.Dial("tcp", m.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(nc)
		fmt.Fprintf(w, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc-web\r\nX-Big: ", path)
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for i := 0; i < 160; i++ {
			if _, err := w.Write(chunk); err != nil {
				done <- err
				return
			}
		}
		_, err := w.WriteString("\r\n\r\n")
		if err == nil {
			err = w.Flush()
		}
		done <- err
	}()
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("10 MiB header: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("10 MiB header: HTTP %d, want 431", resp.StatusCode)
	}
	// meshd stops reading: the write fails or ends, and the connection
	// is closed (a read sees EOF or a reset).
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after 431")
	}
	<-done

	// Others are served all along.
	if _, err := testpb.NewTestServiceClient(cc).EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatalf("native call after bad input: %v", err)
	}
	if r := webCall(t, h1Client(), url, path, "application/grpc-web-text", good, nil); r.code() != codes.OK {
		t.Fatalf("gRPC-Web call after bad input: %v", r.code())
	}
}

// TestGRPCWebTLS: on a TLS grpc_web listener ALPN offers h2 and
// http/1.1: browsers' HTTP/1.1 gets gRPC-Web, native clients gRPC.
func TestGRPCWebTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testkit.NewCA(t, "web")
	certPEM, keyPEM, _ := ca.Issue(t, "meshd", "localhost", "127.0.0.1")
	certFile, keyFile := writeFile(t, dir, "tls.crt", certPEM), writeFile(t, dir, "tls.key", keyPEM)
	bs := startBackends(t, "webtls", 1)
	m := startMesh(t, webConfig(bs, fmt.Sprintf("    tls: {cert_file: %s, key_file: %s}", certFile, keyFile)))
	cc := dial(t, m.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})))
	waitServing(t, cc)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}}}}
	checkUnaryAndStream(t, c, "https://"+m.Addr, "application/grpc-web+proto")
}

// h2Client is an HTTP/2 client: h2c with prior knowledge when tlsConf is
// nil, else TLS with ALPN h2. Every connection it opens has its local
// address sent on addrs (buffered), to find it in the access log.
func h2Client(tlsConf *tls.Config, addrs chan<- string) *http.Client {
	tr := &http2.Transport{TLSClientConfig: tlsConf}
	tr.DialTLSContext = func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		select {
		case addrs <- nc.LocalAddr().String():
		default:
		}
		if tlsConf == nil {
			return nc, nil
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		return tc, nil
	}
	tr.AllowHTTP = tlsConf == nil
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// webPreflight sends a CORS preflight for a gRPC-Web call to url.
func webPreflight(t testing.TB, c *http.Client, url, origin string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodOptions, url, nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web,x-user-agent,grpc-timeout,x-tenant")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("preflight: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestGRPCWebHTTP2: gRPC-Web over HTTP/2, as browsers speak it to a TLS
// listener offering h2 (and h2c with prior knowledge): binary and text,
// unary and server streaming, CORS preflights, native gRPC on the same
// port, and the translated calls are grpc-web calls from the client's
// own address (access log).
func TestGRPCWebHTTP2(t *testing.T) {
	t.Parallel()
	ca := testkit.NewCA(t, "webh2")
	certPEM, keyPEM, _ := ca.Issue(t, "meshd", "localhost", "127.0.0.1")
	tests := []struct {
		name string
		tls  bool
	}{
		{"h2c prior knowledge", false},
		{"TLS ALPN h2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			bs := startBackends(t, "webh2", 1)
			extra, scheme := "", "http"
			var clientTLS *tls.Config
			dialOpts := []grpc.DialOption(nil)
			if tt.tls {
				certFile, keyFile := writeFile(t, dir, "tls.crt", certPEM), writeFile(t, dir, "tls.key", keyPEM)
				extra, scheme = fmt.Sprintf("    tls: {cert_file: %s, key_file: %s}", certFile, keyFile), "https"
				clientTLS = &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
				dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
			}
			accessPath := filepath.Join(dir, "access.log")
			m := startObserved(t, webConfig(bs, extra)+fmt.Sprintf("access_log: {enabled: true, path: %s}\n", accessPath))
			cc := dial(t, m.Addr, dialOpts...)
			waitServing(t, cc)
			local := make(chan string, 16)
			c := h2Client(clientTLS, local)
			base := scheme + "://" + m.Addr

			for _, ct := range []string{"application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text", "application/grpc-web-text+proto"} {
				checkUnaryAndStream(t, c, base, ct)
			}
			req := mustMarshal(t, &testpb.SimpleRequest{})
			r := webCall(t, c, base, "/grpc.testing.TestService/UnaryCall", "application/grpc-web+proto", webFrame(0, req), map[string]string{"Origin": "http://app.example"})
			if r.resp.ProtoMajor != 2 || r.code() != codes.OK || r.resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" {
				t.Fatalf("call from an allowed origin: HTTP/%d, %v, %v", r.resp.ProtoMajor, r.code(), r.resp.Header)
			}
			r = webCall(t, c, base, "/grpc.testing.TestService/UnaryCall", "application/grpc-web+proto", webFrame(0, req), map[string]string{"Origin": "http://evil.example"})
			if r.resp.StatusCode != http.StatusForbidden || r.code() != codes.PermissionDenied {
				t.Fatalf("call from a refused origin: HTTP %d, %v", r.resp.StatusCode, r.code())
			}
			// A malformed text body: the translator's answer, through the engine.
			bad, _ := http.NewRequest(http.MethodPost, base+"/grpc.testing.TestService/UnaryCall", strings.NewReader("!!!!"))
			bad.Header.Set("Content-Type", "application/grpc-web-text")
			if resp, err := c.Do(bad); err != nil {
				t.Fatalf("malformed body: %v", err)
			} else {
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Grpc-Status") != strconv.Itoa(int(codes.InvalidArgument)) {
					t.Errorf("malformed text body: HTTP %d grpc-status %q", resp.StatusCode, resp.Header.Get("Grpc-Status"))
				}
			}

			// CORS preflights over HTTP/2.
			resp := webPreflight(t, c, base+"/grpc.testing.TestService/UnaryCall", "http://app.example")
			if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" {
				t.Fatalf("allowed preflight: HTTP/%d %d %v", resp.ProtoMajor, resp.StatusCode, resp.Header)
			}
			if a := resp.Header.Get("Access-Control-Allow-Headers"); !strings.Contains(a, "x-grpc-web") || !strings.Contains(a, "x-tenant") {
				t.Errorf("Access-Control-Allow-Headers %q", a)
			}
			if resp := webPreflight(t, c, base+"/grpc.testing.TestService/UnaryCall", "http://evil.example"); resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("refused preflight: %d %v", resp.StatusCode, resp.Header)
			}

			// Native gRPC on the same port.
			if _, err := testpb.NewTestServiceClient(cc).UnaryCall(context.Background(), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("native")}}); err != nil {
				t.Fatalf("native call on the grpc_web listener: %v", err)
			}

			mt := scrapeMetrics(t, m.Admin)
			if v := mt.Value(t, "meshd_grpc_web_requests_total", map[string]string{"route": "all", "grpc_code": "OK"}); v < 9 {
				t.Errorf("meshd_grpc_web_requests_total{OK} = %v, want >= 9", v)
			}
			// The access log has the translated calls as grpc-web, from
			// the client's address, not the in-process connection's.
			peers := map[string]bool{}
			for len(local) > 0 {
				peers[<-local] = true
			}
			var lines []string
			testkit.WaitFor(t, 5*time.Second, "grpc-web calls in the access log", func() bool {
				data, _ := os.ReadFile(accessPath)
				lines = lines[:0]
				for _, l := range strings.Split(string(data), "\n") {
					if strings.Contains(l, `"protocol":"grpc-web"`) {
						lines = append(lines, l)
					}
				}
				return len(lines) >= 9
			})
			for _, l := range lines {
				var rec struct {
					Peer string `json:"peer"`
				}
				if err := json.Unmarshal([]byte(l), &rec); err != nil || !peers[rec.Peer] {
					t.Errorf("grpc-web access log line with peer %q, want one of the client's %v: %s", rec.Peer, peers, l)
					break
				}
			}
		})
	}
}
