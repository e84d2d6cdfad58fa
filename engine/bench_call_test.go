package engine

import (
	"context"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// BenchmarkUnaryLifecycle measures the per-call cost of the call's
// lifecycle machinery on top of forwarding: 1 KiB unary calls through the
// engine with every timer a call can have (the client's deadline, the
// route's idle and per-try timeouts) and a retryable Target that keeps a
// replay log, next to plain calls through the same proxy; and calls
// mirrored to a second backend (Target.Mirror), for the copy's cost.
func BenchmarkUnaryLifecycle(b *testing.B) {
	be := startBackend(b, &testBackend{})
	shadow := startBackend(b, &testBackend{})
	p := startProxy(b, be.addr, Config{})
	_, c := dial(b, p.addr)
	req := &testpb.SimpleRequest{Payload: payload(1024)}
	noRetry := func(RetryInfo) (Target, time.Duration, bool) { return Target{}, 0, false }
	for _, bc := range []struct {
		name   string
		target func() Target
	}{
		{"plain", func() Target { return Target{Addr: be.addr} }},
		{"deadline", func() Target { return Target{Addr: be.addr, Timeout: time.Minute} }},
		{"retryable", func() Target {
			return Target{Addr: be.addr, Timeout: time.Minute, IdleTimeout: time.Minute,
				Retry: noRetry, RetryBufferBytes: 1 << 20, PerTryTimeout: time.Minute}
		}},
		{"mirrored", func() Target { return Target{Addr: be.addr, Mirror: &Mirror{Addr: shadow.addr}} }},
	} {
		p.route(func(*Request) (Target, error) { return bc.target(), nil })
		if _, err := c.UnaryCall(context.Background(), req); err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				if _, err := c.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
