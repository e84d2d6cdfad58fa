package engine

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/proc"
)

// cpuTime is the process's user+system CPU time. Client, proxy and backend
// share the process, so the difference between the proxied and the direct
// figure is the proxy's CPU cost per call.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchTarget is one way to reach the backend, with the CPU clock that
// covers every process involved and, for a proxy in its own process, that
// proxy's CPU clock.
type benchTarget struct {
	name     string
	client   testgrpc.TestServiceClient
	cpu      func() time.Duration
	proxyCPU func() time.Duration
	pid      int // the proxy's own process (h2proxy-process), or 0
}

// report adds the CPU metrics of one benchmark run.
func (tg benchTarget) report(b *testing.B, cpu0, proxy0 time.Duration) {
	b.ReportMetric(float64((tg.cpu()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	if tg.proxyCPU != nil {
		b.ReportMetric(float64((tg.proxyCPU()-proxy0).Nanoseconds())/float64(b.N), "proxy-cpu-ns/op")
	}
}

func (tg benchTarget) clocks() (time.Duration, time.Duration) {
	var p time.Duration
	if tg.proxyCPU != nil {
		p = tg.proxyCPU()
	}
	return tg.cpu(), p
}

// startProxyProcess runs h2proxy in a child process (this test binary,
// re-executed) in front of backend, so it is measured like nginx: its own
// process, its own CPU clock. It returns the proxy's address and pid.
func startProxyProcess(b *testing.B, backend string) (string, int) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), proxyProcessEnv+"="+backend, "GOMAXPROCS=2")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close() // the child exits when its stdin closes
		_ = cmd.Wait()
	})
	line := make([]byte, 64)
	n, err := stdout.Read(line)
	if err != nil {
		b.Fatalf("proxy process: %v", err)
	}
	return strings.TrimSpace(string(line[:n])), cmd.Process.Pid
}

// benchTargets returns a client connected directly to a backend, one
// connected through h2proxy and, if an nginx binary is installed, one
// connected through nginx's grpc_pass, the reference meshd is measured
// against.
func benchTargets(b *testing.B, be *testBackend) []benchTarget {
	startBackend(b, be)
	p := startProxy(b, be.addr, Config{})
	_, direct := dial(b, be.addr)
	_, proxied := dial(b, p.addr)
	targets := []benchTarget{{name: "direct", client: direct, cpu: cpuTime}, {name: "engine", client: proxied, cpu: cpuTime}}
	addr, pid := startProxyProcess(b, be.addr)
	_, c := dial(b, addr)
	targets = append(targets, benchTarget{name: "h2proxy-process", client: c, pid: pid,
		cpu:      func() time.Duration { return cpuTime() + procTreeCPU(pid) },
		proxyCPU: func() time.Duration { return procTreeCPU(pid) }})
	if addr, pid := startNginx(b, be.addr); addr != "" {
		_, c := dial(b, addr)
		targets = append(targets, benchTarget{name: "nginx", client: c,
			cpu:      func() time.Duration { return cpuTime() + procTreeCPU(pid) },
			proxyCPU: func() time.Duration { return procTreeCPU(pid) }})
	}
	return targets
}

// procTreeCPU is the CPU time used so far by process pid and its children
// (nginx's master and workers); a process gone meanwhile counts nothing.
func procTreeCPU(pid int) time.Duration {
	var d time.Duration
	for _, p := range append([]int{pid}, proc.Children(pid)...) {
		if st, err := proc.ReadStat(p); err == nil {
			d += st.CPU()
		}
	}
	return d
}

// startNginx runs nginx (if installed) as an h2c gRPC proxy to backend and
// returns its address and pid.
func startNginx(b *testing.B, backend string) (string, int) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, err := os.Stat("/usr/sbin/nginx"); err != nil {
			return "", 0
		}
		bin = "/usr/sbin/nginx"
	}
	addr := testkit.FreeAddr(b)
	dir := b.TempDir()
	conf := fmt.Sprintf(`worker_processes 2;
error_log %[1]s/error.log warn;
pid %[1]s/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  upstream backend { server %[3]s; keepalive 64; }
  server {
    listen %[2]s http2;
    http2_max_concurrent_streams 1000;
    location / { grpc_pass grpc://backend; }
  }
}
`, dir, addr, backend)
	cfgPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", cfgPath, "-g", "daemon off;")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Logf("nginx not started: %v", err)
		return "", 0
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	var dialErr error
	if !testkit.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		var c net.Conn
		if c, dialErr = net.Dial("tcp", addr); dialErr == nil {
			_ = c.Close()
		}
		return dialErr == nil
	}) {
		b.Fatalf("nginx did not listen on %s: %v", addr, dialErr)
	}
	return addr, cmd.Process.Pid
}

// BenchmarkUnary measures 1 KiB unary calls, one at a time (latency) and
// with 16 in flight (throughput).
func BenchmarkUnary(b *testing.B) {
	req := &testpb.SimpleRequest{Payload: payload(1024)}
	for _, tg := range benchTargets(b, &testBackend{}) {
		c, name := tg.client, tg.name
		// Warm up connections (the proxy dials its backend lazily).
		if _, err := c.UnaryCall(context.Background(), req); err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			cpu0, proxy0 := tg.clocks()
			for i := 0; i < b.N; i++ {
				if _, err := c.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			tg.report(b, cpu0, proxy0)
		})
		b.Run(name+"/parallel16", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8) // 8 × GOMAXPROCS(2) = 16 goroutines
			cpu0, proxy0 := tg.clocks()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if _, err := c.UnaryCall(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			tg.report(b, cpu0, proxy0)
		})
	}
}

// BenchmarkStream measures messages per second over one server stream of
// 1 KiB messages.
func BenchmarkStream(b *testing.B) {
	be := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		md, _ := metadata.FromIncomingContext(s.Context())
		n, _ := strconv.Atoi(md.Get("x-count")[0])
		resp := &testpb.StreamingOutputCallResponse{Payload: payload(1024)}
		for i := 0; i < n; i++ {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
		return nil
	}}
	for _, tg := range benchTargets(b, be) {
		c, name := tg.client, tg.name
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-count", strconv.Itoa(b.N))
			cpu0, proxy0 := tg.clocks()
			start := time.Now()
			s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				if _, err := s.Recv(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			tg.report(b, cpu0, proxy0)
		})
	}
}

// BenchmarkStreamConcurrent is the load harness's streaming shape: 50
// server streams in flight on one connection, each 100 × 1 KiB messages
// (one op is one stream). The backend outruns the client, so the proxy
// holds a backlog; for the proxy in its own process it reports the peak
// RSS (VmHWM, reset before the run), which is where buffers sized for
// max-size frames showed.
func BenchmarkStreamConcurrent(b *testing.B) {
	const msgs = 100
	be := &testBackend{streamOut: func(req *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		resp := &testpb.StreamingOutputCallResponse{Payload: payload(1024)}
		for i := 0; i < msgs; i++ {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
		return nil
	}}
	for _, tg := range benchTargets(b, be) {
		c, name := tg.client, tg.name
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			if tg.pid != 0 {
				// Reset the peak to the current RSS (Linux clear_refs).
				if err := proc.ResetPeakRSS(tg.pid); err != nil {
					b.Fatal(err)
				}
			}
			b.SetParallelism(25) // 25 × GOMAXPROCS(2) = 50 streams in flight
			cpu0, proxy0 := tg.clocks()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
					if err != nil {
						b.Error(err)
						return
					}
					for i := 0; i < msgs; i++ {
						if _, err := s.Recv(); err != nil {
							b.Error(err)
							return
						}
					}
				}
			})
			b.ReportMetric(float64(b.N*msgs)/time.Since(start).Seconds(), "msgs/s")
			tg.report(b, cpu0, proxy0)
			if tg.pid != 0 {
				kib, err := proc.StatusKiB(tg.pid, "VmHWM")
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(kib)/1024, "proxy-peak-MiB")
			}
		})
	}
}
