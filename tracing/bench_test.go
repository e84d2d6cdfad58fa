package tracing_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/tracing"
)

// BenchmarkCall measures what tracing adds to one proxied call: the
// director's StartServer, SetRoute, StartClient and two EndSpans, with a
// caller's traceparent to extract and the attempt's header fields to inject.
// "disabled" is tracing off (the zero Provider); "ratio0" creates and
// propagates unsampled spans; "ratio1" records every span and exports it to
// a real OTLP receiver (with the default queue, so a collector slower than
// the loop shows up as dropped/op). The parallel cases run the calls on
// GOMAXPROCS goroutines, as the engine's connections do.
func BenchmarkCall(b *testing.B) {
	for _, bc := range []struct {
		name     string
		enabled  bool
		ratio    float64
		parallel bool
	}{
		{name: "disabled"},
		{name: "ratio0", enabled: true, ratio: 0},
		{name: "ratio1", enabled: true, ratio: 1},
		{name: "disabled/parallel", parallel: true},
		{name: "ratio0/parallel", enabled: true, ratio: 0, parallel: true},
		{name: "ratio1/parallel", enabled: true, ratio: 1, parallel: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := &tracing.Provider{} // the zero value is disabled
			if bc.enabled {
				recv := otlptest.Start(b)
				p = newProvider(b, recv.Addr, tracing.WithSampleRatio(bc.ratio))
			}
			// Parent-based sampling follows the caller's flag, so it must
			// agree with the ratio under test.
			flags := "00"
			if bc.ratio == 1 {
				flags = "01"
			}
			in := propagation.MapCarrier{"traceparent": "00-" + callerTrace + "-" + callerSpan + "-" + flags}
			call := func(out propagation.MapCarrier) {
				ctx, server := p.StartServer(context.Background(), "/pkg.Svc/Do", in, "127.0.0.1:50000")
				tracing.SetRoute(ctx, "bench-route", "bench-cluster")
				_, client := p.StartClient(ctx, "/pkg.Svc/Do", "10.0.0.1:7000", 1, out)
				tracing.EndSpan(client, codes.OK, "")
				tracing.EndSpan(server, codes.OK, "")
			}
			b.ReportAllocs()
			if bc.parallel {
				b.RunParallel(func(pb *testing.PB) {
					out := propagation.MapCarrier{}
					for pb.Next() {
						call(out)
					}
				})
			} else {
				out := propagation.MapCarrier{}
				for b.Loop() {
					call(out)
				}
			}
			b.StopTimer()
			if p.Enabled() {
				// The exporter's backlog is not the calls' cost.
				shutdown(b, p)
				b.ReportMetric(float64(p.Dropped())/float64(b.N), "dropped/op")
			}
		})
	}
}
