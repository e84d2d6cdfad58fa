package otlptest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Receiver is an OTLP/gRPC trace collector listening on Addr. Its methods are
// safe for concurrent use.
type Receiver struct {
	// Addr is the host:port the collector listens on (always 127.0.0.1).
	Addr string

	srv      *grpc.Server
	served   chan struct{} // closed when Serve has returned
	stopOnce sync.Once

	mu       sync.Mutex
	resource []*tracepb.ResourceSpans
	spans    []*tracepb.Span
	changed  chan struct{} // closed and replaced whenever spans arrive
}

// Start starts a Receiver on 127.0.0.1:0. It is stopped by t.Cleanup.
func Start(t testing.TB) *Receiver {
	t.Helper()
	r, err := Listen()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// Listen starts a Receiver on 127.0.0.1:0 for callers without a testing.TB
// (the demo); they must call Stop.
func Listen() (*Receiver, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlptest: listen: %w", err)
	}
	r := &Receiver{
		Addr:    lis.Addr().String(),
		srv:     grpc.NewServer(),
		served:  make(chan struct{}),
		changed: make(chan struct{}),
	}
	coltracepb.RegisterTraceServiceServer(r.srv, traceService{r: r})
	go func() {
		defer close(r.served)
		// Serve's error after Stop is expected; any earlier one shows up in
		// the test as exports that never arrive.
		_ = r.srv.Serve(lis)
	}()
	return r, nil
}

// Stop closes the listener and every open connection and waits for the
// server to finish. Exports after Stop fail. Stop is idempotent.
func (r *Receiver) Stop() {
	r.stopOnce.Do(func() {
		r.srv.Stop()
		<-r.served
	})
}

// Spans returns a copy of the list of spans received so far, flattened over
// resources and scopes, in arrival order. The span messages themselves are
// shared and must not be modified.
func (r *Receiver) Spans() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

// ResourceSpans returns a copy of the list of ResourceSpans received so far,
// for tests that look at the exported resource or instrumentation scope.
func (r *Receiver) ResourceSpans() []*tracepb.ResourceSpans {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.ResourceSpans(nil), r.resource...)
}

// WaitSpans waits until at least n spans have been received and returns them
// (as Spans does). If timeout passes first it fails the test with t.Fatalf
// and returns nil, so it must be called from the test's goroutine.
func (r *Receiver) WaitSpans(t testing.TB, n int, timeout time.Duration) []*tracepb.Span {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		r.mu.Lock()
		got, changed := len(r.spans), r.changed
		if got >= n {
			spans := append([]*tracepb.Span(nil), r.spans...)
			r.mu.Unlock()
			return spans
		}
		r.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("otlptest: got %d spans after %v, want at least %d", got, timeout, n)
			return nil
		}
	}
}

func (r *Receiver) add(rss []*tracepb.ResourceSpans) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range rss {
		r.resource = append(r.resource, rs)
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// traceService adapts Receiver to the generated service interface, keeping
// the embedded Unimplemented type out of Receiver's exported surface.
type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.add(req.GetResourceSpans())
	return &coltracepb.ExportTraceServiceResponse{}, nil
}
