package test

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/tracing"
)

// BenchmarkUnaryTracing is one 1 KiB unary call through meshd with tracing
// off, on with sample ratio 0 (spans created and propagated, not exported)
// and on with ratio 1 (every span exported over OTLP/gRPC to a collector on
// loopback that counts and discards them, so a long run does not hold every
// span in memory). Each meshd is wired as `meshd run` wires it, metrics
// included; tracing off installs no handler at all. All three front the
// same backend in one run: compare the off, ratio0 and ratio1 ns/op and
// cpu-ns/op with benchstat (the benchmark also logs the ratios to "off",
// with -v). On a shared machine cpu-ns/op is the steadier figure.
func BenchmarkUnaryTracing(b *testing.B) {
	bs := startBackends(b, "bench", 1)
	recv := startDiscardCollector(b)
	cfg := simpleConfig(bs, "")
	variants := []struct {
		name string
		opts []tracing.Option
	}{
		{"off", nil},
		{"ratio0", []tracing.Option{tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(0)}},
		{"ratio1", []tracing.Option{tracing.WithEndpoint(recv.Addr), tracing.WithSampleRatio(1), tracing.WithBatchTimeout(100 * time.Millisecond)}},
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	// No caller traceparent: meshd starts each trace, so the ratio decides
	// sampling (a caller's flag would override it).
	ctx := context.Background()
	clients := make([]testpb.TestServiceClient, len(variants))
	for i, v := range variants {
		o := startObserved(b, cfg, v.opts...)
		cc := dial(b, o.Addr)
		waitServing(b, cc)
		clients[i] = testpb.NewTestServiceClient(cc)
	}
	// The last (final-N) run of each sub-benchmark, for the ratios.
	nsPerOp, cpuPerOp := map[string]float64{}, map[string]float64{}
	for i, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := processCPU(b)
			for b.Loop() {
				if _, err := clients[i].UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			cpu := float64((processCPU(b) - cpu0).Nanoseconds()) / float64(b.N)
			b.ReportMetric(cpu, "cpu-ns/op")
			nsPerOp[v.name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			cpuPerOp[v.name] = cpu
		})
	}
	if off := cpuPerOp["off"]; off > 0 {
		b.Logf("cpu-ns/op ratio to tracing off: ratio0 %.3f, ratio1 %.3f; ns/op ratio: ratio0 %.3f, ratio1 %.3f",
			cpuPerOp["ratio0"]/off, cpuPerOp["ratio1"]/off, nsPerOp["ratio0"]/nsPerOp["off"], nsPerOp["ratio1"]/nsPerOp["off"])
	}
	b.Logf("%d spans exported", recv.spans.Load())
}

// processCPU is the CPU time this process (client, meshd, backend and
// collector alike) has used. Unlike wall time it barely moves with the load
// other processes put on a shared machine, so cpu-ns/op compares variants
// even when ns/op is noisy.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// discardCollector is an OTLP/gRPC trace collector that only counts what it
// receives, so a long benchmark does not hold every span in memory.
type discardCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	Addr  string
	spans atomic.Int64
}

func (c *discardCollector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func startDiscardCollector(b *testing.B) *discardCollector {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	c := &discardCollector{Addr: lis.Addr().String()}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis) // returns when Stop closes the listener
	}()
	b.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return c
}
