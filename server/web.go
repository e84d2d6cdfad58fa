package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/grpcweb"
)

// webAccept is the accept loop of a grpc_web listener (package grpcweb
// has the overview). Each connection is sniffed on its own goroutine:
//   - TLS: after the handshake, ALPN h2 goes to the engine as on any
//     listener; http/1.1 (or no ALPN) to the HTTP/1.1 server;
//   - cleartext: the HTTP/2 client preface goes to the engine; anything
//     else, after the first byte that differs from it, to the HTTP/1.1
//     server, with the bytes read replayed.
//
// Native gRPC on such a listener is served by the engine exactly as on
// any other (the sniffed bytes are replayed, and the socket's fast write
// path is kept); gRPC-Web over HTTP/2 reaches the translator through the
// engine and its translator (web_h2.go). The HTTP/1.1 server is net/http's (request
// parsing, header limit, timeouts, chunked responses, keep-alive); its
// handler, grpcweb.Handler, makes each call natively through a
// grpcweb.Native per client connection: an HTTP/2 client over a
// socketpair whose other end the engine serves with the client's address
// as its remote address, and "grpc-web" as its calls' protocol.
type webAccept struct {
	fs        *engine.Server
	h         *grpcweb.Handler
	hs        *http.Server
	h1        *connQueue
	handshake time.Duration
	log       *slog.Logger
	// The gRPC-Web over HTTP/2 translator (web_h2.go): its h2c server,
	// whose listener is h2q, and the Target that reaches it.
	h2       *http.Server
	h2q      *connQueue
	h2target engine.Target

	mu          sync.Mutex
	stopped     bool
	lns         map[net.Listener]struct{}
	natives     map[net.Conn]*grpcweb.Native
	browsers    map[string]*grpcweb.Native // HTTP/2 connections with gRPC-Web streams, by id (web_h2.go)
	nextBrowser uint64
	wg          sync.WaitGroup // connection goroutines, in-process engine connections
	httpWG      sync.WaitGroup // the HTTP/1.1 server's and the translator's Serve
	once        sync.Once      // starts both
}

// webAcceptFor builds lc's accept loop for the engine fs.
func (s *Server) webAcceptFor(cfg *config.Config, lc config.Listener, fs *engine.Server, ecfg engine.Config) *webAccept {
	log := s.log.With("component", "grpcweb", "listener", lc.Name)
	a := &webAccept{
		fs:        fs,
		h1:        newConnQueue(),
		handshake: ecfg.HandshakeTimeout,
		log:       log,
		lns:       map[net.Listener]struct{}{},
		natives:   map[net.Conn]*grpcweb.Native{},
		browsers:  map[string]*grpcweb.Native{},
	}
	if a.handshake <= 0 {
		a.handshake = engine.DefaultHandshakeTimeout
	}
	maxHeader := int(lc.MaxHeaderListSize)
	if maxHeader <= 0 {
		maxHeader = engine.DefaultMaxHeaderListSize
	}
	idle := lc.IdleTimeout.D()
	if lc.IdleTimeout == nil || idle <= 0 {
		idle = 5 * time.Minute
	}
	h := grpcweb.New(grpcweb.Options{AllowOrigins: lc.GRPCWeb.AllowOrigins, MaxMessageSize: cfg.MaxMessageSize, Logger: log})
	a.h = h
	var protos http.Protocols
	protos.SetHTTP1(true) // HTTP/2 is the engine's, sniffed before
	a.hs = &http.Server{
		Handler:           h,
		Protocols:         &protos,
		MaxHeaderBytes:    maxHeader,
		ReadHeaderTimeout: a.handshake,
		IdleTimeout:       idle,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			n := grpcweb.NewNative(func() (net.Conn, error) { return a.connect(c.RemoteAddr()) })
			a.mu.Lock()
			a.natives[c] = n
			a.mu.Unlock()
			return grpcweb.WithNative(ctx, n)
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st != http.StateClosed && st != http.StateHijacked {
				return
			}
			a.mu.Lock()
			n := a.natives[c]
			delete(a.natives, c)
			a.mu.Unlock()
			if n != nil {
				_ = n.Close()
			}
		},
	}
	// TLS connections arrive handshaken, with ALPN other than h2.
	a.hs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	a.newTranslator(maxHeader)
	return a
}

// webProtocol marks the calls of the in-process connections.
var webProtocol = director.WithProtocol(context.Background(), director.ProtocolGRPCWeb)

// connect opens an in-process connection to the engine for a client
// connection from remote: the engine serves one end of a socketpair (a
// real socket, so its fast write path applies) as a connection from
// remote; the other end is returned.
func (a *webAccept) connect(remote net.Addr) (net.Conn, error) {
	mine, theirs, err := socketpair()
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		mine.Close()
		theirs.Close()
		return nil, engine.ErrServerClosed
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		a.fs.ServeConn(webProtocol, &addrConn{UnixConn: theirs, remote: remote})
	}()
	return mine, nil
}

// addrConn is the engine's end of an in-process connection: the
// browser's address is its remote address (for the access log, tracing
// and policy); every other method is the socket's.
type addrConn struct {
	*net.UnixConn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }

func socketpair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "grpcweb-socketpair")
		c, err := net.FileConn(f) // dups fd
		f.Close()
		if err != nil {
			if i == 0 {
				syscall.Close(fds[1])
			} else {
				cs[0].Close()
			}
			return nil, nil, err
		}
		cs[i] = c.(*net.UnixConn)
	}
	return cs[0], cs[1], nil
}

// serve accepts on ln until stop, like engine.Server.Serve, and closes ln
// on return.
func (a *webAccept) serve(ln net.Listener) error {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		_ = ln.Close()
		return engine.ErrServerClosed
	}
	a.lns[ln] = struct{}{}
	a.once.Do(func() {
		a.httpWG.Add(2)
		go func() {
			defer a.httpWG.Done()
			_ = a.hs.Serve(a.h1)
		}()
		go func() {
			defer a.httpWG.Done()
			_ = a.h2.Serve(a.h2q)
		}()
	})
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.lns, ln)
		a.mu.Unlock()
		_ = ln.Close()
	}()
	return acceptLoop(ln, acceptHooks{
		stopped: func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.stopped
		},
		admit: func(net.Conn) bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.stopped {
				return false
			}
			a.wg.Add(1)
			return true
		},
		serve: func(nc net.Conn) {
			defer a.wg.Done()
			a.dispatch(nc)
		},
		stopping: a.h1.done,
	})
}

// dispatch sniffs nc and hands it to the engine or the HTTP/1.1 server.
func (a *webAccept) dispatch(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(a.handshake))
	if tc, ok := nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			_ = nc.Close()
			return
		}
		_ = nc.SetDeadline(time.Time{})
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			a.fs.ServeConn(context.Background(), tc)
			return
		}
		a.h1.push(tc)
		return
	}
	// Read until the bytes differ from the preface, or are all of it:
	// "PRI" and an HTTP/1.1 method part at the first or second byte.
	var buf [len(http2.ClientPreface)]byte
	n := 0
	for n < len(buf) {
		k, err := nc.Read(buf[n:])
		n += k
		if string(buf[:n]) != http2.ClientPreface[:n] {
			break
		}
		if err != nil {
			_ = nc.Close() // nothing, or only part of a preface, came
			return
		}
	}
	_ = nc.SetDeadline(time.Time{})
	rc := &replayConn{Conn: nc, pending: buf[:n]}
	if string(buf[:n]) == http2.ClientPreface {
		a.fs.ServeConn(context.Background(), rc.withSyscall())
		return
	}
	a.h1.push(rc)
}

// stop closes the listeners and the HTTP/1.1 server's queue; connections
// being sniffed finish their dispatch (bounded by the handshake timeout).
func (a *webAccept) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return
	}
	a.stopped = true
	for ln := range a.lns {
		_ = ln.Close()
	}
	a.h1.close()
}

// shutdown drains the HTTP/1.1 server: idle connections close, calls in
// flight finish (the engine drains their in-process connections).
func (a *webAccept) shutdown(ctx context.Context) { _ = a.hs.Shutdown(ctx) }

// close closes every HTTP/1.1 connection (and so their in-process ones)
// and the translator.
func (a *webAccept) close() {
	_ = a.hs.Close()
	a.closeTranslator()
}

// closeTranslator closes the gRPC-Web over HTTP/2 translator. After the
// engine's graceful Shutdown it has nothing left to do: Shutdown drained
// the engine's own Pool, whose connections are the translator's.
func (a *webAccept) closeTranslator() {
	_ = a.h2.Close()
	a.h2q.close()
}

// wait waits for the accept loop's goroutines and the HTTP/1.1 server.
func (a *webAccept) wait() {
	a.httpWG.Wait()
	a.wg.Wait()
}

// replayConn returns the sniffed bytes before reading on.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// withSyscall keeps the socket's syscall.Conn visible, for the engine's
// non-blocking writes (reads still go through Read, which replays).
func (c *replayConn) withSyscall() net.Conn {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return &replaySyscallConn{replayConn: c, sc: sc}
	}
	return c
}

type replaySyscallConn struct {
	*replayConn
	sc syscall.Conn
}

func (c *replaySyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// connQueue is the HTTP/1.1 server's listener: connections dispatch
// pushes.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		_ = c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) close() { q.once.Do(func() { close(q.done) }) }

func (q *connQueue) Close() error { q.close(); return nil }

func (q *connQueue) Addr() net.Addr { return &net.UnixAddr{Name: "grpcweb", Net: "unix"} }
