package test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// BenchmarkGRPCWebVsNative: the same unary call (100-byte payload echoed)
// through one meshd, as native gRPC (grpc-go client, h2c) and as
// gRPC-Web over HTTP/1.1 keep-alive (net/http client) and over HTTP/2
// (h2c, x/net/http2 client: the engine, its translator, then the native
// call), interleaved in one run so all see the same machine. Reports each
// one's time per call and their ratios to native.
func BenchmarkGRPCWebVsNative(b *testing.B) {
	bs := startBackends(b, "bench-web", 1)
	m := startMesh(b, webConfig(bs, ""))
	cc := dial(b, m.Addr)
	waitServing(b, cc)
	client := testpb.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte("x"), 100)}}
	body := webFrame(0, mustMarshal(b, req))
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	url := "http://" + m.Addr + "/grpc.testing.TestService/UnaryCall"
	h2 := h2Client(nil, make(chan string, 16))
	webOn := func(hc *http.Client) {
		r, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/grpc-web+proto")
		resp, err := hc.Do(r)
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(raw) < 100 || resp.Header.Get("Grpc-Status") != "" {
			b.Fatalf("web call: HTTP %d, %d bytes, status %q", resp.StatusCode, len(raw), resp.Header.Get("Grpc-Status"))
		}
	}
	web, webH2 := func() { webOn(hc) }, func() { webOn(h2) }
	native := func() {
		if _, err := client.UnaryCall(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	for range 50 { // warm both paths
		web()
		webH2()
		native()
	}
	var tWeb, tH2, tNative time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		native()
		t1 := time.Now()
		web()
		t2 := time.Now()
		webH2()
		tH2 += time.Since(t2)
		tWeb += t2.Sub(t1)
		tNative += t1.Sub(t0)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tNative.Nanoseconds())/n, "native-ns/call")
	b.ReportMetric(float64(tWeb.Nanoseconds())/n, "web-ns/call")
	b.ReportMetric(float64(tH2.Nanoseconds())/n, "web-h2-ns/call")
	b.ReportMetric(float64(tWeb)/float64(tNative), "web/native")
	b.ReportMetric(float64(tH2)/float64(tNative), "web-h2/native")
}
