package accesslog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"

	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/config"
)

// DefaultQueueSize is how many lines may wait for the writer without
// WithQueueSize.
const DefaultQueueSize = 4096

// Option configures New and Open.
type Option func(*options)

type options struct {
	ratio     float64
	rand      func() float64
	queueSize int
}

// WithSampleRatio logs that share of calls, in [0, 1] (default 1: every
// call). Values outside the range are clamped.
func WithSampleRatio(r float64) Option { return func(o *options) { o.ratio = r } }

// WithRand sets the source of the uniform [0, 1) numbers sampling draws
// (default math/rand/v2's Float64). It must be safe for concurrent use.
func WithRand(f func() float64) Option { return func(o *options) { o.rand = f } }

// WithQueueSize sets how many lines may wait for the writer (default
// DefaultQueueSize); more are dropped and counted.
func WithQueueSize(n int) Option { return func(o *options) { o.queueSize = n } }

// Logger writes access log lines. It is a callrecord.Observer; ObserveCall is
// safe for concurrent use and never blocks on I/O. Create it with New or
// Open and stop it with Close.
type Logger struct {
	h     slog.Handler
	ratio float64
	rand  func() float64
	w     *asyncWriter
	file  *os.File // closed by Close when Open opened it

	closeOnce sync.Once
	closeErr  error
}

var _ callrecord.Observer = (*Logger)(nil)

// New returns a Logger writing to w. It starts the writer goroutine, which
// Close stops. w is written from that goroutine only.
func New(w io.Writer, opts ...Option) *Logger {
	o := options{ratio: 1, rand: rand.Float64, queueSize: DefaultQueueSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.queueSize <= 0 {
		o.queueSize = DefaultQueueSize
	}
	if o.rand == nil {
		o.rand = rand.Float64
	}
	aw := newAsyncWriter(w, o.queueSize)
	return &Logger{
		h:     slog.NewJSONHandler(aw, &slog.HandlerOptions{ReplaceAttr: dropLevel}),
		ratio: min(max(o.ratio, 0), 1),
		rand:  o.rand,
		w:     aw,
	}
}

// Open returns a Logger appending to the file at path, created with mode
// 0644 if needed, or writing to standard error when path is "". The file is
// opened with O_APPEND, so several writers and log rotation by rename plus
// restart (or copytruncate) keep whole lines.
func Open(path string, opts ...Option) (*Logger, error) {
	if path == "" {
		return New(os.Stderr, opts...), nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("accesslog: %w", err)
	}
	l := New(f, opts...)
	l.file = f
	return l, nil
}

// dropLevel leaves the level out: every access line is the same level, and
// the field would only cost bytes.
func dropLevel(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.LevelKey {
		return slog.Attr{}
	}
	return a
}

// ObserveCall writes c's line, if the call is sampled.
func (l *Logger) ObserveCall(c *callrecord.Call) {
	if l.ratio < 1 && (l.ratio == 0 || l.rand() >= l.ratio) {
		return
	}
	r := slog.NewRecord(c.Start.Add(c.Duration), slog.LevelInfo, "access", 0)
	r.AddAttrs(
		slog.String("method", c.Method),
		slog.String("route", c.Route),
		slog.String("cluster", c.Cluster),
		slog.String("endpoint", c.Endpoint),
		slog.String("code", config.CodeName(c.Code)),
		slog.Float64("duration_ms", float64(c.Duration.Microseconds())/1000),
		slog.Int64("bytes_in", c.BytesIn),
		slog.Int64("bytes_out", c.BytesOut),
		slog.Int("attempts", c.Attempts),
		slog.String("trace_id", c.TraceIDString()),
		slog.String("peer", c.PeerString()),
		slog.String("peer_identity", c.Peer),
	)
	if c.Message != "" {
		r.AddAttrs(slog.String("error", c.Message))
	}
	if c.Protocol != "" {
		r.AddAttrs(slog.String("protocol", c.Protocol))
	}
	// The JSON handler's only error comes from the writer, which never
	// fails: a line it cannot queue is counted in Dropped instead.
	_ = l.h.Handle(context.Background(), r)
}

// Dropped returns how many lines were lost: the queue was full, or the
// destination failed a write.
func (l *Logger) Dropped() uint64 { return l.w.dropped.Load() }

// Close writes the lines still queued, stops the writer goroutine and
// closes the file Open opened (never standard error or New's writer). Lines
// logged after Close are dropped. Later calls return the first one's result.
func (l *Logger) Close() error {
	l.closeOnce.Do(func() {
		l.w.close()
		if l.file != nil {
			if err := l.file.Close(); err != nil {
				l.closeErr = fmt.Errorf("accesslog: close: %w", err)
			}
		}
	})
	return l.closeErr
}

// asyncWriter hands each Write to a goroutine through a bounded queue.
// slog's handlers call Write once per record, with the whole line, so a
// queued buffer is always a whole line.
type asyncWriter struct {
	out     io.Writer
	lines   chan *[]byte
	pool    sync.Pool
	dropped atomic.Uint64

	closeOnce sync.Once
	quit      chan struct{}
	done      chan struct{}
}

func newAsyncWriter(out io.Writer, size int) *asyncWriter {
	w := &asyncWriter{
		out:   out,
		lines: make(chan *[]byte, size),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	w.pool.New = func() any { b := make([]byte, 0, 512); return &b }
	go w.run()
	return w
}

// Write queues a copy of p (the handler reuses its buffer) or drops it. It
// never blocks and never fails.
func (w *asyncWriter) Write(p []byte) (int, error) {
	select {
	case <-w.quit:
		w.dropped.Add(1)
		return len(p), nil
	default:
	}
	b := w.pool.Get().(*[]byte)
	*b = append((*b)[:0], p...)
	select {
	case w.lines <- b:
	default:
		w.dropped.Add(1)
		w.pool.Put(b)
	}
	return len(p), nil
}

// maxBatch bounds how many bytes the writer joins into one write.
const maxBatch = 64 << 10

// run writes queued lines until close, joining lines that are already
// waiting into one write (one syscall for a burst). On close it writes
// what is queued and returns.
func (w *asyncWriter) run() {
	defer close(w.done)
	batch := make([]byte, 0, maxBatch)
	n := 0 // lines in batch
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if _, err := w.out.Write(batch); err != nil {
			w.dropped.Add(uint64(n))
		}
		batch, n = batch[:0], 0
	}
	add := func(b *[]byte) {
		batch = append(batch, *b...)
		n++
		w.pool.Put(b)
	}
	for {
		select {
		case b := <-w.lines:
			add(b)
		more:
			for len(batch) < maxBatch {
				select {
				case b := <-w.lines:
					add(b)
				default:
					break more
				}
			}
			flush()
		case <-w.quit:
			for {
				select {
				case b := <-w.lines:
					add(b)
					if len(batch) >= maxBatch {
						flush()
					}
				default:
					flush()
					return
				}
			}
		}
	}
}

func (w *asyncWriter) close() {
	w.closeOnce.Do(func() { close(w.quit) })
	<-w.done
}
