package server

import (
	"context"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/origdst"
)

// odstAccept is the accept loop of a frame engine original_dst listener.
// grpc-go runs transport credentials on each accepted connection; the frame
// engine has none, so this loop runs origdst's handshake itself, each on its
// own goroutine (a handshake may wait detect_timeout for the client's first
// bytes, and must not hold up the next accept). A connection that does not
// speak HTTP/2 is relayed to its original destination by origdst and never
// reaches the engine, so the engine's connection counts (frameListenerStats)
// are of gRPC connections only, as h2guard's are on the grpc engine. A gRPC
// connection is served with its origdst.Info in its context, the context
// the engine hands its Director, where origdst.FromContext finds it.
type odstAccept struct {
	fs    *engine.Server
	creds *origdst.Credentials

	mu       sync.Mutex
	stopped  bool
	lns      map[net.Listener]struct{}
	shaking  map[net.Conn]struct{} // connections in the handshake
	stopping chan struct{}         // closed by stop, ends an accept backoff
	wg       sync.WaitGroup        // one per connection goroutine
}

// originalDstAccept makes lc's accept loop for the engine fs. Its
// credentials are registered with s.dests, which ends their relays when
// meshd stops.
func (s *Server) originalDstAccept(lc config.Listener, fs *engine.Server) *odstAccept {
	c := origdst.New(origdst.Options{
		Inbound:       lc.OriginalDst.Direction == config.DirectionInbound,
		DetectTimeout: lc.OriginalDst.DetectTimeout.D(),
		Logger:        s.log.With("component", "origdst", "listener", lc.Name),
		AdmitOpaque:   s.admitOpaque(lc),
	})
	s.dests.addCredentials(c)
	return &odstAccept{
		fs:       fs,
		creds:    c,
		lns:      map[net.Listener]struct{}{},
		shaking:  map[net.Conn]struct{}{},
		stopping: make(chan struct{}),
	}
}

// serve accepts on ln until stop, like engine.Server.Serve (whose
// ErrServerClosed it returns once stopped), and closes ln on return.
func (a *odstAccept) serve(ln net.Listener) error {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		_ = ln.Close()
		return engine.ErrServerClosed
	}
	a.lns[ln] = struct{}{}
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
		admit: func(nc net.Conn) bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.stopped {
				return false
			}
			a.shaking[nc] = struct{}{}
			a.wg.Add(1)
			return true
		},
		serve:    a.serveConn,
		stopping: a.stopping,
	})
}

// serveConn runs the handshake, then serves a gRPC connection until it
// closes.
func (a *odstAccept) serveConn(nc net.Conn) {
	defer a.wg.Done()
	conn, info, err := a.creds.ServerHandshake(nc)
	a.mu.Lock()
	delete(a.shaking, nc)
	a.mu.Unlock()
	if err != nil {
		// ErrConnDispatched: the relay owns the connection now. Anything
		// else (the client left, stop closed it) ends it here, as grpc-go
		// does with a failed handshake.
		if !errors.Is(err, credentials.ErrConnDispatched) {
			_ = nc.Close()
		}
		return
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: nc.RemoteAddr(), LocalAddr: nc.LocalAddr(), AuthInfo: info})
	if mc, ok := nc.(*meshConn); ok {
		// An inbound mesh listener: the engine sees origdst's replaying
		// connection, not this one, so connContext finds it here once
		// the engine's handshake has completed TLS.
		ctx = withMeshConn(ctx, mc)
	}
	// After stop the engine is shut down: ServeConn drains or closes the
	// connection at once.
	a.fs.ServeConn(ctx, conn)
}

// stop closes the listeners and the connections still in their handshake;
// the engine's Shutdown or Close then ends the served ones.
func (a *odstAccept) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return
	}
	a.stopped = true
	close(a.stopping)
	for ln := range a.lns {
		_ = ln.Close()
	}
	for nc := range a.shaking {
		_ = nc.Close()
	}
}

// wait waits for the connection goroutines; call it after stop and the
// engine's Shutdown or Close, which make them return.
func (a *odstAccept) wait() { a.wg.Wait() }
