package server

import (
	"errors"
	"net"
	"syscall"

	"github.com/meshd/meshd/internal/rawsock"
	"sync"
	"sync/atomic"
)

// limitListener closes connections beyond max at once. Blocking Accept
// instead (x/net's netutil.LimitListener) would leave clients waiting in the
// kernel backlog until they time out; a closed connection makes a gRPC
// client fail fast (UNAVAILABLE) and try another replica.
type limitListener struct {
	net.Listener
	max    int64
	active atomic.Int64
	// rejected counts connections closed for being over the limit.
	rejected atomic.Uint64
}

// limit wraps l when max > 0.
func limit(l net.Listener, max int) net.Listener {
	if max <= 0 {
		return l
	}
	return &limitListener{Listener: l, max: int64(max)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) > l.max {
			l.active.Add(-1)
			l.rejected.Add(1)
			c.Close()
			continue
		}
		return &limitConn{Conn: c, release: func() { l.active.Add(-1) }}, nil
	}
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// NetConn returns the accepted connection, so that origdst can read its
// socket options.
func (c *limitConn) NetConn() net.Conn { return c.Conn }

// SyscallConn exposes the accepted socket, so the engine reads and writes
// it without entering the scheduler (engine/rawio.go) under a connection
// limit too.
func (c *limitConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("server: connection has no socket")
	}
	return sc.SyscallConn()
}

// ReadsSocket tells the engine that Read is the socket's: limitConn adds
// nothing to the bytes.
func (c *limitConn) ReadsSocket() bool {
	return rawsock.ReadsSocket(c.Conn)
}
