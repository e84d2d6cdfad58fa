package server

import (
	"errors"
	"net"
	"time"

	"github.com/meshd/meshd/engine"
)

// acceptHooks are what an accept loop of meshd's own (original_dst
// listeners, gRPC-Web listeners) needs of its owner, which keeps its
// listeners, connections and stopped flag under its own lock.
type acceptHooks struct {
	// stopped reports whether the owner was stopped.
	stopped func() bool
	// admit takes a new connection into the owner's count (its WaitGroup)
	// unless the owner was stopped meanwhile, in which case it reports
	// false and the loop closes the connection and returns.
	admit func(net.Conn) bool
	// serve runs on the connection's own goroutine and ends the count
	// admit started.
	serve func(net.Conn)
	// stopping is closed when the owner stops: it ends a backoff wait.
	stopping <-chan struct{}
}

// acceptLoop accepts on ln until the owner stops (engine.ErrServerClosed,
// as engine.Server.Serve returns) or ln fails for good. On resource
// exhaustion (EMFILE and the like) it backs off as the engine's own accept
// loop does instead of spinning.
func acceptLoop(ln net.Listener, h acceptHooks) error {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if h.stopped() {
				return engine.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-h.stopping:
				t.Stop()
				return engine.ErrServerClosed
			}
			continue
		}
		backoff = 0
		if !h.admit(nc) {
			_ = nc.Close()
			return engine.ErrServerClosed
		}
		go h.serve(nc)
	}
}
