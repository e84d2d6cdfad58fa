package tracing_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/tracing"
)

// routingBackend records a route on every call, as the director does.
type routingBackend struct {
	healthpb.UnimplementedHealthServer
}

func (routingBackend) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	tracing.SetRoute(ctx, "bench-route", "bench-cluster")
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// noopHandler is a stats.Handler that does nothing, to measure what grpc-go
// itself spends on calls that have a stats handler.
type noopHandler struct{}

func (noopHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (noopHandler) HandleRPC(context.Context, stats.RPCStats) {}

func (noopHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (noopHandler) HandleConn(context.Context, stats.ConnStats) {}

// BenchmarkHandlers measures what tracing adds to one loopback unary call
// that passes a server handler and a client handler (one hop of meshd's two):
// "direct" has no tracing at all; "disabled" makes the director's calls
// (WithAttempt, SetRoute) against a disabled Provider; "noop-handlers" adds
// stats handlers that do nothing, which is grpc-go's share of the cost of
// the next two (it builds stats events only when a handler is installed);
// "ratio0" creates and
// propagates unsampled spans; "ratio1" records and exports every span to a
// real OTLP receiver (with the default queue, so a collector slower than the
// loop shows up as dropped/op).
func BenchmarkHandlers(b *testing.B) {
	for _, bc := range []struct {
		name    string
		traced  bool // the director's calls are made
		enabled bool // the Provider exports
		noop    bool // do-nothing stats handlers: grpc-go's own cost of having any
		ratio   float64
	}{
		{name: "direct"},
		{name: "disabled", traced: true},
		{name: "noop-handlers", traced: true, noop: true},
		{name: "ratio0", traced: true, enabled: true, ratio: 0},
		{name: "ratio1", traced: true, enabled: true, ratio: 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := &tracing.Provider{} // the zero value is disabled
			if bc.enabled {
				recv := otlptest.Start(b)
				p = newProvider(b, recv.Addr, tracing.WithSampleRatio(bc.ratio))
			}
			var sopts []grpc.ServerOption
			var copts []grpc.DialOption
			if p.Enabled() {
				sopts = append(sopts, grpc.StatsHandler(p.ServerHandler()))
				copts = append(copts, grpc.WithStatsHandler(p.ClientHandler()))
			}
			if bc.noop {
				sopts = append(sopts, grpc.StatsHandler(noopHandler{}))
				copts = append(copts, grpc.WithStatsHandler(noopHandler{}))
			}
			addr := serve(b, grpc.NewServer(sopts...), func(s *grpc.Server) {
				healthpb.RegisterHealthServer(s, routingBackend{})
			})
			client := healthpb.NewHealthClient(dial(b, addr, copts...))
			ctx := context.Background()
			req := &healthpb.HealthCheckRequest{}
			b.ReportAllocs()
			for b.Loop() {
				cctx := ctx
				if bc.traced {
					cctx = tracing.WithAttempt(ctx, addr, 1)
				}
				if _, err := client.Check(cctx, req); err != nil {
					b.Fatalf("Check: %v", err)
				}
			}
			b.StopTimer()
			if p.Enabled() {
				// The exporter's backlog is not the calls' cost.
				shutdownCtx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				_ = p.Shutdown(shutdownCtx)
				b.ReportMetric(float64(p.Dropped())/float64(b.N), "dropped/op")
			}
		})
	}
}
