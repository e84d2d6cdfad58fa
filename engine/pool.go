package engine

import (
	"context"
	"log/slog"
	"net"
	"time"
)

// PoolConfig tunes a Pool made with NewPool: the backend side of Config.
// The zero value of every field selects the default the Config field of
// the same name documents, so PoolConfig{} is a working configuration.
// The client side (stream and message limits, keepalive, abuse rules)
// stays with each Server: a message's size is checked by the Server whose
// client sent or receives it.
type PoolConfig struct {
	// InitialWindowSize is the per-stream flow-control window meshd grants
	// to backends (response direction). Default 1 MiB.
	InitialWindowSize uint32
	// ConnWindowSize is the connection window granted to each backend
	// connection. Default 16 MiB; never below InitialWindowSize.
	ConnWindowSize uint32
	// MaxFrameSize is the largest frame payload accepted from backends and
	// the largest of the Pool's DATA buffer classes. Default 16384.
	MaxFrameSize uint32
	// MaxHeaderListSize is enforced on response header and trailer
	// blocks: a larger one ends its call with INTERNAL naming the limit.
	// Blocks are decoded, and backends told, up to four times it
	// (headerDecodeLimit), so that a response over the limit gets that
	// status rather than costing its connection. Default 64 KiB.
	MaxHeaderListSize uint32
	// ConnsPerBackend is how many connections the Pool keeps to each
	// backend address (per Upstream); more only while every one is at the
	// backend's MAX_CONCURRENT_STREAMS. Default 2.
	ConnsPerBackend int
	// DialTimeout bounds dialing a backend and receiving its SETTINGS.
	// Default 5s.
	DialTimeout time.Duration
	// Dial opens backend connections for Upstreams without a Dial of their
	// own. Default: plain TCP (h2c with prior knowledge).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// IdleTimeout closes backend connections (with a GOAWAY) that had no
	// stream for this long. Default 0: kept until Forget or Close.
	IdleTimeout time.Duration
	// Logger receives dial failures and backend protocol errors. The
	// engine adds "component"="engine"; the caller adds only what the
	// engine cannot know (the cluster). Default: discard.
	Logger *slog.Logger
}

// config is c as the Config that backend connections read.
func (c PoolConfig) config() Config {
	return Config{
		InitialWindowSize: c.InitialWindowSize,
		ConnWindowSize:    c.ConnWindowSize,
		MaxFrameSize:      c.MaxFrameSize,
		MaxHeaderListSize: c.MaxHeaderListSize,
		ConnsPerBackend:   c.ConnsPerBackend,
		DialTimeout:       c.DialTimeout,
		Dial:              c.Dial,
		IdleTimeout:       c.IdleTimeout,
		Logger:            c.Logger,
	}.withDefaults()
}

// NewPool returns an empty Pool that belongs to the caller, not to a
// Server: Servers use it for the streams whose Target's Upstream names it
// (Upstream.Pool), whichever Server accepted them, and it outlives them.
// Its owner ends it with Shutdown or Close, once no Server hands it
// streams any more (a stream opened after that fails with UNAVAILABLE).
func NewPool(cfg PoolConfig) *Pool { return newPool(cfg.config()) }

// PoolStats is a snapshot of a Pool's counters, for /metrics.
type PoolStats struct {
	Conns   int64 // open backend connections
	Streams int64 // backend streams open or being opened
	// DialErrors counts failed dials (TCP, TLS handshake, HTTP/2
	// preface and SETTINGS).
	DialErrors int64
	// ProtocolErrors counts backend connections closed with a GOAWAY
	// error code (a backend broke HTTP/2).
	ProtocolErrors int64
	// StreamErrors counts backend streams ended because the backend broke
	// the protocol on them (flow control, malformed response headers).
	StreamErrors int64
	// BufferedBytes is the request DATA queued on the Pool's connections
	// right now, waiting for a backend's flow-control window. Summed when
	// Stats is called.
	BufferedBytes int64
}

// Stats returns a snapshot of the Pool's counters.
func (p *Pool) Stats() PoolStats {
	c := &p.sh.stats
	p.mu.Lock()
	conns := make([]*conn, 0, len(p.all))
	for uc := range p.all {
		conns = append(conns, &uc.conn)
	}
	p.mu.Unlock()
	return PoolStats{
		Conns:          c.UpstreamConns.Load(),
		Streams:        c.UpstreamStreams.Load(),
		DialErrors:     c.DialErrors.Load(),
		ProtocolErrors: c.ProtocolErrors.Load(),
		StreamErrors:   c.StreamErrors.Load(),
		BufferedBytes:  queuedOn(conns),
	}
}

// Shutdown stops the Pool gracefully: its connections take no new
// streams and close with a GOAWAY once their streams have ended. When ctx
// is done first, what is left is closed at once (Close) and ctx.Err()
// returned. Streams opened after Shutdown fail with UNAVAILABLE.
func (p *Pool) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true // no new dial; waiters fail at Close
	p.mu.Unlock()
	p.drain()
	err := p.waitIdle(ctx)
	p.close()
	return err
}

// Close closes every connection of the Pool at once (their streams end as
// with a lost backend), fails the streams waiting for a dial, and waits
// for the Pool's goroutines. Streams opened after Close fail with
// UNAVAILABLE. Close may be called more than once.
func (p *Pool) Close() error {
	p.close()
	return nil
}
