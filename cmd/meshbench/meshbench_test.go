package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/internal/testkit/proc"
	"github.com/meshd/meshd/test/backend"
)

// TestChildren finds a real child process by its parent PID, as the harness
// finds nginx's workers, measures the pair's memory and stops it by PID.
func TestChildren(t *testing.T) {
	t.Parallel()
	c, err := startChild("sleep", exec.Command("sleep", "60"))
	if err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	defer c.stop(syscall.SIGTERM, 5*time.Second)
	if got := proc.Children(os.Getpid()); !slices.Contains(got, c.pid()) {
		t.Errorf("proc.Children(%d) = %v, want it to contain %d", os.Getpid(), got, c.pid())
	}
	if mib, err := proc.MemMiB(os.Getpid(), c.pid()); err != nil || mib <= 0 {
		t.Errorf("proc.MemMiB over two processes = %v, %v", mib, err)
	}
	c.stop(syscall.SIGTERM, 5*time.Second)
	if _, err := proc.MemMiB(os.Getpid(), c.pid()); err == nil {
		t.Error("proc.MemMiB of a stopped process did not fail")
	}
	if !c.exited() {
		t.Error("child still running after stop")
	}
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	nan := math.NaN()
	tests := []struct {
		name             string
		in               []float64
		n                int
		median, min, max float64
	}{
		{"odd", []float64{3, 1, 2}, 3, 2, 1, 3},
		{"even", []float64{4, 1, 3, 2}, 4, 2.5, 1, 4},
		{"skips NaN and Inf", []float64{nan, 5, math.Inf(1), 7}, 2, 6, 5, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := summarize(tc.in)
			if s.n != tc.n || s.median != tc.median || s.min != tc.min || s.max != tc.max {
				t.Errorf("summarize(%v) = %+v", tc.in, s)
			}
		})
	}
	if s := summarize([]float64{nan}); s.n != 0 || !math.IsNaN(s.median) {
		t.Errorf("summarize(NaN) = %+v, want empty", s)
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	var s []int64
	for i := int64(1); i <= 1000; i++ {
		s = append(s, i)
	}
	for q, want := range map[float64]time.Duration{0.5: 500, 0.99: 990, 0.999: 999, 1: 1000} {
		if got := percentile(s, q); got != want {
			t.Errorf("percentile(1..1000, %v) = %v, want %v", q, got, want)
		}
	}
	if got := percentile(nil, 0.99); got != 0 {
		t.Errorf("percentile(nil) = %v", got)
	}
}

// TestChecks judges a hand-built run: per-round ratios, the -rates
// checks, the mTLS chain against nginx's, nginx's absence and smoke mode.
func TestChecks(t *testing.T) {
	t.Parallel()
	r := newResults()
	for i, v := range []float64{100, 200} {
		r.set(direct, "unary_calls_per_s", i, v)
		r.set(direct, "p99_ms", i, 1)
		r.set(direct, "p99_ms_at_2000", i, 1)
		r.set(direct, "stream_msgs_per_s", i, v)
		r.set(nginx, "unary_calls_per_s", i, v*0.5)
		r.set(nginx, "p99_ms", i, 2)
		r.set(nginx, "p99_ms_at_2000", i, 2)
		r.set(nginx, "cpu_s_per_10k", i, 0.3)
		r.set(nginx, "cpu_s_per_10k_at_500", i, 1)
		r.set(nginx, "cpu_s_per_10k_at_2000", i, 1)
		r.set("meshd", "unary_calls_per_s", i, v*0.8) // 1.6× nginx, 0.8× direct
		r.set("meshd", "p99_ms", i, 1.5)
		r.set("meshd", "p99_ms_at_2000", i, 3) // +2 ms against nginx's +1
		r.set("meshd", "cpu_s_per_10k", i, 0.6)
		r.set("meshd", "cpu_s_per_10k_at_500", i, 1.1)  // 1.1×: within 1.2×
		r.set("meshd", "cpu_s_per_10k_at_2000", i, 1.1) // 1.1×: over 1.0×
		r.set("meshd", "stream_msgs_per_s", i, v*0.5)
		r.set("meshd", "peak_rss_mib", i, 30)
		r.set(nginxMTLS, "unary_calls_per_s", i, 10)
		r.set(nginxMTLS, "cpu_s_per_10k", i, 2)
		// The mTLS chain: judged only against nginx-mtls, never against a
		// single proxy's targets (its peak RSS would MISS).
		r.set(meshdMTLS, "unary_calls_per_s", i, 12) // 1.2×: under 1.3×
		r.set(meshdMTLS, "cpu_s_per_10k", i, 1)
		r.set(meshdMTLS, "peak_rss_mib", i, 100)
	}
	r.set("meshd", "idle_rss_mib", 0, 120)
	p, _ := planFor("quick")
	p.Rates = []int{500, 2000, 1000}
	targets := []string{direct, "meshd", nginx, meshdMTLS, nginxMTLS}
	r.deriveAddedP99(targets, p.Rates)
	want := map[string]string{
		"meshd unary throughput ≥ 1.5× nginx":                "PASS",
		"meshd unary throughput ≥ 0.8× direct":               "PASS",
		"meshd CPU per call at full load ≤ 0.6× nginx's":     "MISS",
		"meshd CPU per call at 500/s ≤ 1.2× nginx's":         "PASS",
		"meshd CPU per call at 2000/s ≤ 1.0× nginx's":        "MISS",
		"meshd added p99 at 2000/s ≤ nginx's":                "PASS",
		"meshd added p99 at 2000/s ≤ nginx's (-rates)":       "MISS",
		"meshd streaming msgs/s ≥ 0.95× direct":              "MISS",
		"meshd peak RSS under throughput load ≤ 40 MiB":      "PASS",
		"meshd RSS with 10000 idle streams ≤ 60 MiB":         "MISS",
		"meshd-mtls mTLS chain throughput ≥ 1.3× nginx-mtls": "MISS",
		"meshd-mtls mTLS chain CPU per call ≤ nginx-mtls's":  "PASS",
	}
	got := checks(r, p, targets, true)
	if len(got) != len(want) {
		t.Fatalf("got %d checks, want %d: %+v", len(got), len(want), got)
	}
	for _, c := range got {
		if k := c.Target + " " + c.Name; want[k] != c.Result {
			t.Errorf("%s: %s (%s), want %s", k, c.Result, c.Detail, want[k])
		}
	}
	for _, c := range checks(r, p, []string{direct, "meshd", meshdMTLS}, false) {
		if strings.Contains(c.Name, "nginx") && c.Result != "n/a" {
			t.Errorf("without nginx and nginx-mtls, %s = %s, want n/a", c.Name, c.Result)
		}
	}
	p.Mode = "smoke"
	for _, c := range checks(r, p, targets, true) {
		if c.Result == "PASS" || c.Result == "MISS" {
			t.Errorf("smoke mode judged %s: %s", c.Name, c.Result)
		}
	}
}

func TestParseRates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		rates   []int
		withMax bool
		bad     bool
	}{
		{"", nil, false, false},
		{"500,2000,max", []int{500, 2000}, true, false},
		{" max , 500,500", []int{500}, true, false},
		{"fast", nil, false, true},
		{"0", nil, false, true},
	} {
		rates, withMax, err := parseRates(tc.in)
		if (err != nil) != tc.bad || !slices.Equal(rates, tc.rates) || withMax != tc.withMax {
			t.Errorf("parseRates(%q) = %v, %v, %v", tc.in, rates, withMax, err)
		}
	}
}

// TestMeshdConfigIsValid keeps the harness's generated config in step with
// meshd's strict config schema.
func TestMeshdConfigIsValid(t *testing.T) {
	t.Parallel()
	for _, extra := range []string{"", grpcWebListener} {
		for _, pprof := range []bool{false, true} {
			y := meshdConfig("127.0.0.1:15000", "127.0.0.1:15001", "127.0.0.1:9001", extra, pprof)
			c, err := config.Parse([]byte(y), "meshbench.yaml")
			if err != nil {
				t.Errorf("%v\n%s", err, y)
				continue
			}
			if c.Admin.Pprof != pprof {
				t.Errorf("admin.pprof: %v, want %v\n%s", c.Admin.Pprof, pprof, y)
			}
		}
		y := meshdConfig("127.0.0.1:15000", "127.0.0.1:15001", "127.0.0.1:9001", extra, false)
		c, err := config.Parse([]byte(y), "meshbench.yaml")
		if err != nil {
			t.Errorf("%v\n%s", err, y)
			continue
		}
		if web := c.Listeners[0].GRPCWeb != nil; web != (extra != "") {
			t.Errorf("grpc_web on the listener: %v, want %v\n%s", web, extra != "", y)
		}
	}
}

func TestNginxConf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		version   string
		newSyntax bool
		listen    string
	}{
		{"nginx version: nginx/1.22.1", false, "listen 127.0.0.1:8443 http2;"},
		{"nginx version: nginx/1.25.1", true, "listen 127.0.0.1:8443;"},
		{"nginx version: nginx/1.24.0 (Ubuntu)", false, "listen 127.0.0.1:8443 http2;"},
	}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			t.Parallel()
			maj, min, pat, ok := nginxVersion(tc.version)
			if !ok {
				t.Fatalf("cannot parse %q", tc.version)
			}
			newSyntax := atLeast(maj, min, pat, 1, 25, 1)
			if newSyntax != tc.newSyntax {
				t.Fatalf("atLeast 1.25.1 = %v", newSyntax)
			}
			conf := nginxConf("127.0.0.1:8443", "127.0.0.1:9001", 2, newSyntax)
			for _, want := range []string{tc.listen, "grpc_pass grpc://backend;", "worker_processes 2;", "access_log off;", "server 127.0.0.1:9001;", "keepalive 256;"} {
				if !strings.Contains(conf, want) {
					t.Errorf("conf lacks %q:\n%s", want, conf)
				}
			}
			if strings.Contains(conf, "http2 on;") != newSyntax {
				t.Errorf("http2 on; present = %v, want %v", !newSyntax, newSyntax)
			}
		})
	}
	if _, _, _, ok := nginxVersion("openresty"); ok {
		t.Error("parsed a version out of nothing")
	}
}

// TestServeBackend runs the -serve-backend mode in-process: it prints a
// working address and stops when stdin closes.
func TestServeBackend(t *testing.T) {
	t.Parallel()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- serveBackend(inR, outW) }()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	cl, err := dialClient(strings.TrimSpace(line), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	if err := probe(context.Background(), cl, req, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	inW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveBackend did not return after stdin closed")
	}
}

// TestLoadPhases runs each load phase, bounded by count, against a real
// backend and checks what it counted (never how fast).
func TestLoadPhases(t *testing.T) {
	t.Parallel()
	b, err := backend.Start("phases")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	cl, err := dialClient(b.Addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}

	t.Run("closed loop stops at the count", func(t *testing.T) {
		r := closedLoop(ctx, cl.stubs, 8, time.Minute, 200, unaryOp(req))
		if r.ops != 200 || r.items != 200 || r.errs != 0 {
			t.Errorf("ops %d items %d errs %d (first %v), want 200 200 0", r.ops, r.items, r.errs, r.firstErr)
		}
	})
	t.Run("streams count messages", func(t *testing.T) {
		sreq := &testpb.StreamingOutputCallRequest{}
		for range 10 {
			sreq.ResponseParameters = append(sreq.ResponseParameters, &testpb.ResponseParameters{Size: 1024})
		}
		r := closedLoop(ctx, cl.stubs, 4, time.Minute, 20, streamOp(sreq, 10))
		if r.ops != 20 || r.items != 200 || r.errs != 0 {
			t.Errorf("ops %d items %d errs %d (first %v), want 20 200 0", r.ops, r.items, r.errs, r.firstErr)
		}
	})
	t.Run("failures are counted", func(t *testing.T) {
		bad := &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: 14, Message: "down"}}
		r := closedLoop(ctx, cl.stubs, 2, time.Minute, 10, unaryOp(bad))
		if r.errs != 10 || r.ok() != 0 || r.firstErr == nil {
			t.Errorf("errs %d ok %d first %v, want 10 0 non-nil", r.errs, r.ok(), r.firstErr)
		}
	})
	t.Run("open loop sends every call", func(t *testing.T) {
		r := openLoop(ctx, cl.stubs, 500, 200*time.Millisecond, 100, req)
		if r.sent+r.dropped != 100 || r.errs != 0 || r.p50 <= 0 || r.p50 > r.p99 || r.p99 > r.p999 {
			t.Errorf("%+v", r)
		}
	})
	t.Run("idle streams stay open through the measurement", func(t *testing.T) {
		rss := func() (float64, error) { return proc.RSSMiB(os.Getpid()) }
		peaked := false
		r, err := idleStreams(ctx, b.Addr, 600, 20*time.Second, 0, rss, func() { peaked = true })
		if err != nil {
			t.Fatal(err)
		}
		if r.opened != 600 || r.peakMiB <= 0 || !peaked {
			t.Errorf("opened %d peak %.1f MiB atPeak %v", r.opened, r.peakMiB, peaked)
		}
	})
}

// TestChainConfigsAreValid keeps the chains' generated configs in step with
// meshd's strict config schema, and checks that the leaves the harness
// issues are what identity: files accepts, with the SPIFFE IDs the mesh
// expects.
func TestChainConfigsAreValid(t *testing.T) {
	t.Parallel()
	files, err := writeMeshIdentity(t.TempDir(), "web", "api")
	if err != nil {
		t.Fatal(err)
	}
	for svc, f := range files {
		src, err := identity.NewFiles(f.cert, f.key, f.ca, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
		want := "spiffe://meshbench.local/ns/default/dc/dc1/svc/" + svc
		if got := src.Current().ID.String(); got != want {
			t.Errorf("%s leaf is %s, want %s", svc, got, want)
		}
	}
	for _, tc := range []struct {
		name  string
		files map[string]meshFiles
	}{{meshd2Hop, nil}, {meshdMTLS, files}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api, web := chainConfigs(tc.files, "127.0.0.1:9001", "127.0.0.1:15000", "127.0.0.1:15001", "127.0.0.1:15002", "127.0.0.1:15003")
			for name, y := range map[string]string{"api": api, "web": web} {
				c, err := config.Parse([]byte(y), name+".yaml")
				if err != nil {
					t.Fatalf("%s: %v\n%s", name, err, y)
				}
				if (c.Mesh != nil) != (tc.files != nil) {
					t.Errorf("%s: mesh section %v, want it only for %s\n%s", name, c.Mesh != nil, meshdMTLS, y)
				}
			}
			if tc.files != nil {
				for _, want := range []string{"mesh_tls: strict", "{source: web, action: allow}", "default_action: deny"} {
					if !strings.Contains(api, want) {
						t.Errorf("api config lacks %q:\n%s", want, api)
					}
				}
				if !strings.Contains(web, "mesh_tls: {service: api}") {
					t.Errorf("web config does not dial api with mesh TLS:\n%s", web)
				}
			}
		})
	}
}

// TestSmokeChains runs the harness in smoke mode against real meshd
// processes, the chains included, with grpc-proxy (built by the harness),
// nginx's TLS chain (if nginx is installed) and a -rates phase: every
// target must answer (the harness fails otherwise), the chains' churn phase
// must count connections, the rates phase must record a p99 and a CPU
// figure, and the report must carry the mTLS-against-plaintext and
// meshd-against-nginx chain ratios. meshd-grpcweb runs beside meshd: its
// gRPC-Web calls must succeed in the unary throughput phase, the other
// phases must skip it with the stated reason, and the report must carry
// the meshd-grpcweb/meshd ratio. No timing is asserted.
func TestSmokeChains(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds meshd and runs it (-short)")
	}
	bin := filepath.Join(t.TempDir(), "meshd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/meshd/meshd/cmd/meshd").CombinedOutput(); err != nil {
		t.Fatalf("go build meshd: %v\n%s", err, out)
	}
	jsonFile := filepath.Join(t.TempDir(), "load.json")
	var stdout, stderr strings.Builder
	err := run([]string{"-mode", "smoke", "-meshd", bin, "-targets", "direct,meshd-2hop,meshd-mtls,grpc-proxy,nginx-mtls,meshd,meshd-grpcweb",
		"-rates", "300,max", "-json", jsonFile},
		strings.NewReader(""), &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"meshd-mtls / meshd-2hop: mTLS hop against plaintext hop",
		"web → mesh mTLS → api", "web → h2c → api",
		"both meshds of a chain",
		"-rates: proxy CPU-seconds per 10k calls", "CPU @300/s", "CPU @max", "+p99 @300/s",
		"mwitkow/grpc-proxy v0.0.0-20250813121105-2866842de9a5", grpcProxyIdleSkip,
		"meshd-mtls   mTLS chain throughput ≥ 1.3× nginx-mtls",
		"meshd-grpcweb / meshd: a gRPC-Web call (HTTP/1.1) against a native one", grpcWebOnlyUnary,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Targets []jsonTarget
		Metrics map[string]map[string]struct{ Median *float64 }
		Pairs   map[string]map[string]struct{ Median *float64 }
		Checks  []check
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	haveNginx := false
	for _, tg := range rep.Targets {
		haveNginx = haveNginx || tg.Name == nginxMTLS && tg.Available
	}
	measured := []string{direct, meshd2Hop, meshdMTLS, grpcProxy}
	if haveNginx { // nginx is optional; without it nginx-mtls is unavailable, not a failure
		measured = append(measured, nginxMTLS)
		if m := rep.Pairs[meshdMTLS+"/"+nginxMTLS]["unary_calls_per_s"].Median; m == nil || *m <= 0 {
			t.Errorf("pair meshd-mtls/nginx-mtls unary_calls_per_s = %v, want > 0", m)
		}
		if m := rep.Metrics[nginxMTLS]["hop_conns_per_s"].Median; m == nil || *m <= 0 {
			t.Errorf("nginx-mtls hop_conns_per_s = %v, want > 0", m)
		}
	}
	for _, tn := range measured {
		for _, k := range []string{"unary_calls_per_s", "p99_ms_at_300"} {
			if m := rep.Metrics[tn][k].Median; m == nil || *m <= 0 {
				t.Errorf("%s %s = %v, want > 0", tn, k, m)
			}
		}
		if tn != direct {
			if m := rep.Metrics[tn]["cpu_s_per_10k_at_300"].Median; m == nil || *m < 0 {
				t.Errorf("%s cpu_s_per_10k_at_300 = %v, want ≥ 0", tn, m)
			}
		}
	}
	for _, tn := range []string{meshd2Hop, meshdMTLS} {
		for _, k := range []string{"unary_calls_per_s", "hop_conns_per_s"} {
			if m := rep.Metrics[tn][k].Median; m == nil || *m <= 0 {
				t.Errorf("%s %s = %v, want > 0", tn, k, m)
			}
		}
		// CPU comes in clock ticks (10 ms): a smoke phase's few hundred
		// calls or 20 connections may cost less than one, so only its
		// presence is asserted.
		for _, k := range []string{"cpu_s_per_10k", "hop_cpu_ms_per_conn"} {
			if m := rep.Metrics[tn][k].Median; m == nil || *m < 0 {
				t.Errorf("%s %s = %v, want ≥ 0", tn, k, m)
			}
		}
	}
	if !strings.Contains(stderr.String(), "other phases skipped: "+grpcWebOnlyUnary) {
		t.Errorf("progress lacks meshd-grpcweb's skipped phases:\n%s", stderr.String())
	}
	for k, want := range map[string]bool{"unary_calls_per_s": true, "cpu_s_per_10k": true, "p50_ms": false, "stream_msgs_per_s": false, "p99_ms_at_300": false, "idle_rss_mib": false} {
		m := rep.Metrics[meshdGRPCWeb][k].Median
		if got := m != nil; got != want {
			t.Errorf("meshd-grpcweb %s = %v, want measured: %v", k, m, want)
		}
		if m != nil && (*m < 0 || k == "unary_calls_per_s" && *m == 0) {
			t.Errorf("meshd-grpcweb %s = %v", k, *m)
		}
	}
	if m := rep.Pairs[meshdGRPCWeb+"/"+meshd]["unary_calls_per_s"].Median; m == nil || *m <= 0 {
		t.Errorf("pair meshd-grpcweb/meshd unary_calls_per_s = %v, want > 0", m)
	}
	if m := rep.Pairs[meshdMTLS+"/"+meshd2Hop]["unary_calls_per_s"].Median; m == nil || *m <= 0 {
		t.Errorf("pair ratio unary_calls_per_s = %v, want > 0", m)
	}
	for _, c := range rep.Checks {
		if c.Target == meshdGRPCWeb {
			t.Errorf("meshd-grpcweb judged against a native proxy's target: %+v", c)
		}
		if isChain(c.Target) && !strings.Contains(c.Name, nginxMTLS) {
			t.Errorf("chain %s judged against a single proxy's target: %+v", c.Target, c)
		}
	}
}

// TestParseGRPCWebResponse reads gRPC-Web unary response bodies: a data
// frame and a trailer frame with grpc-status 0, and what must fail.
func TestParseGRPCWebResponse(t *testing.T) {
	t.Parallel()
	frame := func(flag byte, b []byte) []byte {
		f := []byte{flag, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(f[1:], uint32(len(b)))
		return append(f, b...)
	}
	msg, err := proto.Marshal(&testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, 1024)}})
	if err != nil {
		t.Fatal(err)
	}
	ok := frame(0x80, []byte("grpc-status: 0\r\ngrpc-message: \r\n"))
	resp, err := parseGRPCWebResponse(append(frame(0, msg), ok...))
	if err != nil || len(resp.GetPayload().GetBody()) != 1024 {
		t.Fatalf("parse = %v, %v", resp, err)
	}
	for name, body := range map[string][]byte{
		"status 13":       append(frame(0, msg), frame(0x80, []byte("Grpc-Status: 13\r\ngrpc-message: boom"))...),
		"no trailers":     frame(0, msg),
		"no data":         ok,
		"two data frames": append(append(frame(0, msg), frame(0, msg)...), ok...),
		"compressed":      append(frame(1, msg), ok...),
		"truncated":       append(frame(0, msg), ok...)[:100],
		"after trailers":  append(append(frame(0, msg), ok...), 0),
		"no status":       append(frame(0, msg), frame(0x80, []byte("grpc-message: x\r\n"))...),
	} {
		if _, err := parseGRPCWebResponse(body); err == nil {
			t.Errorf("%s: parsed without an error", name)
		}
	}
}

// TestParsePerfCSV reads perf stat -x, output as -syscalls gets it: one
// line per -e in order, several events summed into one counter, a
// "<not counted>" event as 0, messages and blank lines skipped, and a
// count of lines that does not match the events asked for refused.
func TestParsePerfCSV(t *testing.T) {
	t.Parallel()
	index := []int{0, 1, 1, 2}
	good := "\n" +
		"1200,,raw_syscalls:sys_enter,3000000000,100.00,,\n" +
		"300,,syscalls:sys_enter_read,3000000000,100.00,,\n" +
		"<not counted>,,syscalls:sys_enter_readv,0,0.00,,\n" +
		"90,,context-switches,3000000000,100.00,,\n"
	got, err := parsePerfCSV(good, index, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []float64{1200, 300, 90}) {
		t.Errorf("sums %v, want [1200 300 90]", got)
	}
	for _, bad := range []string{
		"1200,,raw_syscalls:sys_enter,1,100.00,,\n",
		good + "5,,syscalls:sys_enter_write,1,100.00,,\n",
		"",
	} {
		if _, err := parsePerfCSV(bad, index, 3); err == nil {
			t.Errorf("parsePerfCSV(%q): no error", bad)
		}
	}
}
