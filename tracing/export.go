package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// gate is the Provider's only span processor. It sits in front of the SDK's
// BatchSpanProcessor and exists to count what is lost: the batch processor
// drops spans on a full queue (it must never block the data path) but only
// keeps that count to itself. The gate admits at most limit spans that have
// not yet been exported or failed; the batch processor's queue is larger, so
// it never drops on its own and every loss is counted here or in the
// exporter.
type gate struct {
	next  sdktrace.SpanProcessor // the batch processor
	exp   *countingExporter
	limit int64

	// pending counts sampled spans handed to next and not yet through an
	// export, successful or not.
	pending atomic.Int64
	// refused counts spans not handed to next: queue full or shut down.
	refused atomic.Uint64
	closed  atomic.Bool
	// done is set once the batch processor has stopped: whatever is still
	// pending then was never exported.
	done atomic.Bool

	shutdownOnce sync.Once
	shutdownErr  error
}

var _ sdktrace.SpanProcessor = (*gate)(nil)

// OnStart does nothing: only ended spans are exported.
func (g *gate) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd admits s to the batch processor if there is room, and counts it as
// dropped otherwise. It never blocks.
func (g *gate) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return // the batch processor ignores these as well
	}
	if g.closed.Load() {
		g.refused.Add(1)
		return
	}
	if g.pending.Add(1) > g.limit {
		g.pending.Add(-1)
		g.refused.Add(1)
		return
	}
	g.next.OnEnd(s)
}

// ForceFlush exports what is queued.
func (g *gate) ForceFlush(ctx context.Context) error { return g.next.ForceFlush(ctx) }

// Shutdown stops the batch processor, letting it export what is queued, and
// waits until it has stopped. If ctx ends first, the batch processor returns
// but keeps draining in the background with its own timeouts; aborting the
// exporter makes that drain fail at once, so the wait below is short and no
// goroutine outlives Shutdown.
func (g *gate) Shutdown(ctx context.Context) error {
	g.shutdownOnce.Do(func() {
		g.closed.Store(true)
		err := g.next.Shutdown(ctx)
		if err != nil {
			g.exp.abort()
		}
		<-g.exp.done
		g.exp.abort() // releases the abort context's resources
		g.done.Store(true)
		g.shutdownErr = errors.Join(err, g.exp.closingErr())
	})
	return g.shutdownErr
}

// dropped returns the number of spans lost so far.
func (g *gate) dropped() uint64 {
	n := g.refused.Load() + g.exp.failed.Load()
	if g.done.Load() {
		n += uint64(max(g.pending.Load(), 0))
	}
	return n
}

// countingExporter wraps the OTLP exporter to count spans in failed exports
// and to log the collector going away and coming back, once each way rather
// than once per batch. It returns nil even for failed exports: the batch
// processor would otherwise hand the error to OpenTelemetry's global error
// handler, which writes to the standard logger, bypassing meshd's slog.
type countingExporter struct {
	next sdktrace.SpanExporter
	gate *gate
	log  *slog.Logger

	failed  atomic.Uint64
	failing atomic.Bool

	// abortCtx ends when Shutdown gives up waiting; exports then fail at
	// once instead of running out their timeouts.
	abortCtx context.Context
	abort    context.CancelFunc
	done     chan struct{} // closed when Shutdown has returned

	mu          sync.Mutex
	closeFailed int   // spans failed after shutdown began
	closeErr    error // the last such failure
}

var _ sdktrace.SpanExporter = (*countingExporter)(nil)

func newCountingExporter(next sdktrace.SpanExporter, g *gate, log *slog.Logger) *countingExporter {
	ctx, cancel := context.WithCancel(context.Background())
	return &countingExporter{
		next:     next,
		gate:     g,
		log:      log,
		abortCtx: ctx,
		abort:    cancel,
		done:     make(chan struct{}),
	}
}

// ExportSpans sends spans and accounts for them; see the type comment for
// why it returns nil on failure.
func (e *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	defer e.gate.pending.Add(-int64(len(spans)))
	err := e.abortCtx.Err()
	if err == nil {
		ctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(e.abortCtx, cancel)
		err = e.next.ExportSpans(ctx, spans)
		stop()
		cancel()
	}
	if err != nil {
		e.failed.Add(uint64(len(spans)))
		if e.failing.CompareAndSwap(false, true) {
			e.log.Warn("trace export failed; dropping spans until the collector answers",
				"spans", len(spans), "err", err)
		}
		if e.gate.closed.Load() {
			e.mu.Lock()
			e.closeFailed += len(spans)
			e.closeErr = err
			e.mu.Unlock()
		}
		return nil
	}
	if e.failing.CompareAndSwap(true, false) {
		e.log.Info("trace export recovered", "dropped_total", e.gate.dropped())
	}
	return nil
}

// Shutdown closes the OTLP exporter's connection.
func (e *countingExporter) Shutdown(ctx context.Context) error {
	defer close(e.done)
	return e.next.Shutdown(ctx)
}

// closingErr reports spans the final flush failed to export.
func (e *countingExporter) closingErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closeFailed == 0 {
		return nil
	}
	return fmt.Errorf("flush: %d spans not exported: %w", e.closeFailed, e.closeErr)
}
