package otlptest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/meshd/meshd/internal/otlptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// export sends one batch of spans named names to addr through the real OTLP
// exporter, synchronously, and returns the export error.
func export(t *testing.T, addr string, names ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	exp, err := otlptracegrpc.New(ctx,
		otlptracegrpc.WithEndpoint(addr),
		otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}),
	)
	if err != nil {
		t.Fatalf("otlptracegrpc.New: %v", err)
	}
	defer func() {
		if err := exp.Shutdown(context.Background()); err != nil {
			t.Errorf("exporter shutdown: %v", err)
		}
	}()
	// A TracerProvider without processors only builds spans; they are
	// handed to the exporter directly so the test controls the batch.
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	spans := make([]sdktrace.ReadOnlySpan, 0, len(names))
	for _, n := range names {
		_, s := tp.Tracer("otlptest").Start(ctx, n)
		s.End()
		spans = append(spans, s.(sdktrace.ReadOnlySpan))
	}
	return exp.ExportSpans(ctx, spans)
}

func TestReceiverStoresSpans(t *testing.T) {
	t.Parallel()
	r := otlptest.Start(t)
	if err := export(t, r.Addr, "a", "b"); err != nil {
		t.Fatalf("export: %v", err)
	}
	if err := export(t, r.Addr, "c"); err != nil {
		t.Fatalf("export: %v", err)
	}
	spans := r.WaitSpans(t, 3, 5*time.Second)
	var got []string
	for _, s := range spans {
		got = append(got, s.GetName())
	}
	if fmt.Sprint(got) != "[a b c]" {
		t.Errorf("span names = %v, want [a b c]", got)
	}
	if n := len(r.ResourceSpans()); n != 2 {
		t.Errorf("ResourceSpans: got %d, want 2 (one per export)", n)
	}
	// Spans returns a copy: appending to it must not show up in the receiver.
	_ = append(spans[:1], spans[2])
	if again := r.Spans(); again[1].GetName() != "b" {
		t.Errorf("Spans() shares its backing array with callers")
	}
}

// fatalRecorder records Fatalf instead of ending the goroutine, so the
// timeout path of WaitSpans can be observed.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestWaitSpansTimeout(t *testing.T) {
	t.Parallel()
	r := otlptest.Start(t)
	if err := export(t, r.Addr, "only"); err != nil {
		t.Fatalf("export: %v", err)
	}
	rec := &fatalRecorder{TB: t}
	start := time.Now()
	if got := r.WaitSpans(rec, 2, 100*time.Millisecond); got != nil {
		t.Errorf("WaitSpans returned %d spans, want nil on timeout", len(got))
	}
	if rec.msg == "" {
		t.Fatal("WaitSpans did not fail the test on timeout")
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("WaitSpans gave up after %v, before its timeout", el)
	}
	t.Log(rec.msg)
}

func TestStopRefusesExports(t *testing.T) {
	t.Parallel()
	r := otlptest.Start(t)
	r.Stop()
	r.Stop() // idempotent; t.Cleanup calls it once more
	if err := export(t, r.Addr, "lost"); err == nil {
		t.Fatal("export to a stopped receiver succeeded")
	}
	if n := len(r.Spans()); n != 0 {
		t.Errorf("stopped receiver holds %d spans", n)
	}
}
