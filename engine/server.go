package engine

import (
	"context"
	"errors"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("engine: server closed")

// shared is the configuration, logger, DATA buffers and counters of one
// owner: a Server's client connections, or a Pool's backend connections.
// A call's frames cross owners (a client's DATA is queued on a backend
// connection and the other way round), so a buffer may be taken from one
// owner's bufPool and given back to another's: bufPool allows that.
type shared struct {
	cfg   Config
	log   *slog.Logger
	bufs  bufPool
	stats counters
	// deadlines fires the deadlines of the Server's calls (deadlines.go).
	deadlines deadlineQueue
}

func (sh *shared) getBuf(n int) *[]byte { return sh.bufs.get(n) }

func (sh *shared) putBuf(b *[]byte) { sh.bufs.put(b) }

// minBufShift sets the smallest DATA buffer class, 1 KiB.
const minBufShift = 10

// bufPool holds the buffers DATA payloads are copied into while they wait
// to be written, in size classes: 1 KiB, 2 KiB, 4 KiB... and the largest,
// MaxFrameSize. A frame gets the smallest class that holds it, so a small
// frame does not pin a max-frame-size buffer: with one 16 KiB buffer per
// frame, a backlog of 1 KiB gRPC messages took 16 times its size in heap.
type bufPool struct {
	sizes []int
	pools []sync.Pool // pools[i] holds *[]byte of len sizes[i]
}

func newBufPool(maxFrame int) bufPool {
	var sizes []int
	for sz := 1 << minBufShift; sz < maxFrame; sz <<= 1 {
		sizes = append(sizes, sz)
	}
	sizes = append(sizes, maxFrame)
	return bufPool{sizes: sizes, pools: make([]sync.Pool, len(sizes))}
}

// class returns the index of the smallest class of at least n bytes (the
// largest class for anything bigger).
func (p *bufPool) class(n int) int {
	i := 0
	if n > 1<<minBufShift {
		i = bits.Len(uint(n-1)) - minBufShift
	}
	return min(i, len(p.sizes)-1)
}

// get returns a buffer of at least n bytes. Above the largest class it is
// allocated to size and never pooled (put drops it): that only happens
// when the frame was read by an owner with a larger MaxFrameSize (a
// Server and a Pool configured apart), and a shorter buffer would cut the
// frame.
func (p *bufPool) get(n int) *[]byte {
	if n > p.sizes[len(p.sizes)-1] {
		b := make([]byte, n)
		return &b
	}
	i := p.class(n)
	if v := p.pools[i].Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, p.sizes[i])
	return &b
}

// put takes back a buffer obtained from get, of this bufPool or another's:
// it is kept only if its length is exactly one of this pool's classes, so
// a buffer from a pool with other classes (another MaxFrameSize) is left
// to the garbage collector rather than handed out at the wrong size.
func (p *bufPool) put(b *[]byte) {
	if i := p.class(len(*b)); p.sizes[i] == len(*b) {
		p.pools[i].Put(b)
	}
}

func statusInternal(msg string) *status.Status { return status.New(codes.Internal, msg) }

// counters backs Stats.
type counters struct {
	ActiveConns, ActiveStreams, StreamsTotal        atomic.Int64
	UpstreamConns, UpstreamStreams                  atomic.Int64
	ProtocolErrors, StreamErrors, RefusedStreams    atomic.Int64
	DeadlinesExceeded, MessagesTooLarge, DialErrors atomic.Int64
	MidMessageResets, HeadersHeld, HedgedAttempts   atomic.Int64
}

// Stats is a snapshot of a Server's counters, for /metrics. The backend
// side (UpstreamConns, UpstreamStreams, DialErrors, and the backend
// connections' share of ProtocolErrors, StreamErrors and BufferedBytes) is
// the Server's own Pool's: streams sent through an Upstream with a Pool of
// its own (NewPool) are counted in that Pool's PoolStats instead.
type Stats struct {
	ActiveConns     int64 // open client connections
	ActiveStreams   int64 // client streams open
	StreamsTotal    int64 // client streams accepted since start
	UpstreamConns   int64 // open backend connections of the Server's own Pool
	UpstreamStreams int64 // backend streams open or being opened on them
	// ProtocolErrors counts connections closed with a GOAWAY error code
	// (client or backend misbehaviour, ENHANCE_YOUR_CALM).
	ProtocolErrors int64
	// StreamErrors counts streams reset because the peer broke the
	// protocol on them (flow control, malformed headers).
	StreamErrors int64
	// RefusedStreams counts client streams refused at MaxConcurrentStreams.
	RefusedStreams    int64
	DeadlinesExceeded int64 // calls ended by meshd's deadline timer
	MessagesTooLarge  int64 // calls ended by MaxRecvMsgSize/MaxSendMsgSize
	DialErrors        int64 // failed backend dials
	// MidMessageResets counts calls meshd ended (deadline, lost backend,
	// oversized or malformed response) after part of a response message had
	// been forwarded to the client: they are reset with RST_STREAM(CANCEL)
	// instead of getting meshd's status, which would cut the message short.
	MidMessageResets int64
	// HeadersHeld counts attempts of retryable calls whose response
	// HEADERS meshd held until the attempt's next frame (retry.go), so that
	// a status after header metadata could be retried.
	HeadersHeld int64
	// HedgedAttempts counts the attempts hedged calls started beside
	// their first (hedge.go).
	HedgedAttempts int64
	// BufferedBytes is the DATA payload queued in meshd right now, waiting
	// to be written (typically for a peer's flow-control window); bounded
	// by the windows meshd advertises. Summed over connections when Stats
	// is called, so the data path pays no shared counter.
	BufferedBytes int64
}

// Server is a gRPC-aware HTTP/2 forwarding proxy: it accepts h2c
// (prior-knowledge) connections, asks its Director where each stream goes,
// and forwards frames to the backend through the Pool of the Target's
// Upstream, or through its own Pool. All methods are safe for concurrent
// use.
type Server struct {
	director Director
	sh       *shared
	pool     *Pool
	ctx      context.Context
	cancel   context.CancelFunc

	mu        sync.Mutex
	listeners map[*net.Listener]struct{}
	conns     map[*serverConn]struct{}
	shutdown  bool          // no new connections
	closed    bool          // Close was called: no goroutine may be started
	allGone   chan struct{} // closed when shutdown and no connection is left
	wg        sync.WaitGroup
}

// NewServer returns a Server that routes streams with d. cfg's zero fields
// take their defaults.
func NewServer(d Director, cfg Config) *Server {
	sh := &shared{cfg: cfg.withDefaults()}
	sh.bufs = newBufPool(int(sh.cfg.MaxFrameSize))
	sh.log = sh.cfg.Logger.With("component", "engine")
	s := &Server{
		director:  d,
		sh:        sh,
		pool:      newPool(sh.cfg),
		listeners: make(map[*net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		allGone:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Pool returns the Server's own upstream connection pool: the one streams
// go through when their Target's Upstream names no Pool.
func (s *Server) Pool() *Pool { return s.pool }

// poolFor returns the Pool a stream through up goes through.
func (s *Server) poolFor(up *Upstream) *Pool {
	if up != nil && up.Pool != nil {
		return up.Pool
	}
	return s.pool
}

// Stats returns a snapshot of the Server's counters, its own Pool's
// included.
func (s *Server) Stats() Stats {
	c := &s.sh.stats
	ps := s.pool.Stats()
	return Stats{
		ActiveConns:       c.ActiveConns.Load(),
		ActiveStreams:     c.ActiveStreams.Load(),
		StreamsTotal:      c.StreamsTotal.Load(),
		UpstreamConns:     ps.Conns,
		UpstreamStreams:   ps.Streams,
		ProtocolErrors:    c.ProtocolErrors.Load() + ps.ProtocolErrors,
		StreamErrors:      c.StreamErrors.Load() + ps.StreamErrors,
		RefusedStreams:    c.RefusedStreams.Load(),
		DeadlinesExceeded: c.DeadlinesExceeded.Load(),
		MessagesTooLarge:  c.MessagesTooLarge.Load(),
		DialErrors:        ps.DialErrors,
		MidMessageResets:  c.MidMessageResets.Load(),
		HeadersHeld:       c.HeadersHeld.Load(),
		HedgedAttempts:    c.HedgedAttempts.Load(),
		BufferedBytes:     s.bufferedBytes() + ps.BufferedBytes,
	}
}

// bufferedBytes sums the DATA queued on every client connection.
func (s *Server) bufferedBytes() int64 {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, &sc.conn)
	}
	s.mu.Unlock()
	return queuedOn(conns)
}

// queuedOn sums the DATA queued on conns.
func queuedOn(conns []*conn) int64 {
	var n int64
	for _, c := range conns {
		c.mu.Lock()
		n += c.queued
		c.mu.Unlock()
	}
	return n
}

// Serve accepts connections on ln and serves each on its own goroutines. It
// returns ErrServerClosed after Shutdown or Close, or the accept error that
// stopped it. Serve closes ln on return.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners[&ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, &ln)
		s.mu.Unlock()
		_ = ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Resource exhaustion (EMFILE and the like): back off as
			// net/http does instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.sh.log.Warn("engine: accept failed", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed || s.shutdown {
			s.mu.Unlock()
			_ = nc.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.ServeConn(s.ctx, nc)
		}()
	}
}

// ServeConn serves one already-accepted connection (TLS-terminated, or from
// a listener that resolves SO_ORIGINAL_DST) and returns when it is closed.
// ctx is the parent of the connection context that Director.Direct gets, so
// values the caller put in it (meshd's server: the connection's original
// destination, as a grpc peer) reach the Director. Cancelling ctx closes the
// connection at once; Shutdown drains it gracefully.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	sc := newServerConn(s, ctx)
	sc.init(s.sh, nc, false)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns[sc] = struct{}{}
	drain := s.shutdown
	s.mu.Unlock()
	s.sh.stats.ActiveConns.Add(1)
	if drain {
		sc.startDrain()
	}
	stop := context.AfterFunc(ctx, func() { sc.hardClose(ctx.Err()) })
	sc.serve()
	stop()
	s.sh.stats.ActiveConns.Add(-1)
	s.mu.Lock()
	delete(s.conns, sc)
	if s.shutdown && len(s.conns) == 0 {
		select {
		case <-s.allGone:
		default:
			close(s.allGone)
		}
	}
	s.mu.Unlock()
}

// Shutdown stops accepting connections and drains the open ones: each gets
// a GOAWAY announcing shutdown, then, after a PING round trip, the final
// GOAWAY with the last stream it will process. In-flight streams run to
// completion until ctx is done; then everything left is closed hard.
// Shutdown returns ctx.Err() if it had to force the close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		_ = (*ln).Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	if len(s.conns) == 0 {
		select {
		case <-s.allGone:
		default:
			close(s.allGone)
		}
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.startDrain()
	}
	var err error
	select {
	case <-s.allGone:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		// Client connections are gone, so no backend stream is left on
		// the Server's own Pool: let its connections close with a GOAWAY
		// before the hard stop. Pools of their own (NewPool) serve other
		// Servers too; their owner closes them.
		s.pool.drain()
		err = s.pool.waitIdle(ctx)
	}
	s.Close()
	return err
}

// Close closes the listeners, every client connection and the backend
// connections of the Server's own Pool at once, and waits for all of the
// Server's goroutines to exit. Streams it had on other Pools are reset;
// those Pools stay open.
func (s *Server) Close() error {
	s.mu.Lock()
	s.shutdown = true
	s.closed = true
	for ln := range s.listeners {
		_ = (*ln).Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	s.cancel()
	for _, sc := range conns {
		sc.hardClose(ErrServerClosed)
	}
	s.wg.Wait()
	s.pool.close()
	// The calls ended with their connections; a timer armed for one of
	// their deadlines would still fire, for nothing.
	s.sh.deadlines.stop()
	return nil
}
