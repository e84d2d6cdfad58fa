package identity

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"
)

// recordTypeHandshake is the first byte of every TLS ClientHello (a TLS
// record of type handshake). A plaintext HTTP/2 connection starts with the
// preface "PRI * HTTP/2.0", so one byte tells them apart.
const recordTypeHandshake = 0x16

// Sniff wraps a connection accepted by a "permissive" listener, one that
// takes both mesh TLS and plaintext while a mesh migrates. The returned
// *SniffConn reads one byte from nc on its first Read or Write (an HTTP/2
// server writes its SETTINGS before it reads, and in both TLS and h2 the
// client speaks first, so that byte is on its way) and then behaves as
// tls.Server(nc with that byte put back, cfg) if it is 0x16, else as nc.
// Deadlines pass through to nc. cfg must not be nil; callers that need
// the TLS state or the raw connection type-assert to *SniffConn.
func Sniff(nc net.Conn, cfg *tls.Config) net.Conn {
	return &SniffConn{nc: nc, cfg: cfg}
}

// SniffConn is the connection Sniff returns. It is safe for concurrent
// use as a net.Conn is: one Read and one Write may run at once, and Close
// may be called at any time (it unblocks a pending decision).
type SniffConn struct {
	nc  net.Conn
	cfg *tls.Config

	once sync.Once
	mu   sync.Mutex // guards the fields below, set once by decide
	done bool
	conn net.Conn  // what Read and Write use after the decision
	tls  *tls.Conn // non-nil if the peer speaks TLS
	err  error     // the first byte could not be read
}

var _ net.Conn = (*SniffConn)(nil)

// decide reads the first byte, once; concurrent callers wait for it.
func (c *SniffConn) decide() (net.Conn, error) {
	c.once.Do(func() {
		var b [1]byte
		_, err := io.ReadFull(c.nc, b[:])
		c.mu.Lock()
		defer c.mu.Unlock()
		c.done = true
		if err != nil {
			c.err = err
			return
		}
		pc := &prefixConn{Conn: c.nc, first: b[0], pending: true}
		if b[0] == recordTypeHandshake {
			c.tls = tls.Server(pc, c.cfg)
			c.conn = c.tls
		} else {
			c.conn = pc
		}
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn, c.err
}

// Read reads from the decided connection, deciding first.
func (c *SniffConn) Read(p []byte) (int, error) {
	conn, err := c.decide()
	if err != nil {
		return 0, err
	}
	return conn.Read(p)
}

// Write writes to the decided connection, deciding first: it blocks until
// the peer sent its first byte.
func (c *SniffConn) Write(p []byte) (int, error) {
	conn, err := c.decide()
	if err != nil {
		return 0, err
	}
	return conn.Write(p)
}

// Close closes the connection: the TLS connection (sending close_notify)
// if the peer spoke TLS, else nc. Before the decision it closes nc, which
// ends a pending first read.
func (c *SniffConn) Close() error {
	c.mu.Lock()
	tc := c.tls
	c.mu.Unlock()
	if tc != nil {
		return tc.Close()
	}
	return c.nc.Close()
}

// ConnectionState returns the TLS state; false for plaintext or before
// the first byte decided.
func (c *SniffConn) ConnectionState() (tls.ConnectionState, bool) {
	c.mu.Lock()
	tc := c.tls
	c.mu.Unlock()
	if tc == nil {
		return tls.ConnectionState{}, false
	}
	return tc.ConnectionState(), true
}

// NetConn returns the wrapped connection.
func (c *SniffConn) NetConn() net.Conn { return c.nc }

// LocalAddr is nc's.
func (c *SniffConn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr is nc's.
func (c *SniffConn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// SetDeadline sets nc's deadlines.
func (c *SniffConn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// SetReadDeadline sets nc's read deadline; it also bounds the first byte.
func (c *SniffConn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets nc's write deadline.
func (c *SniffConn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// prefixConn is nc with one byte put back in front of its reads. Only the
// decided connection's reader reads it, so pending needs no lock.
type prefixConn struct {
	net.Conn
	first   byte
	pending bool
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if p.pending {
		if len(b) == 0 {
			return 0, nil
		}
		b[0] = p.first
		p.pending = false
		return 1, nil
	}
	return p.Conn.Read(b)
}
