package server

import (
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/h2guard"
	"github.com/meshd/meshd/origdst"
)

// listenerOptions are the grpc.ServerOptions for one listener's TLS,
// keepalive, connection age, header and handshake limits and transparent
// interception. The original_dst credentials it creates are registered
// with s.dests, which closes their relays when meshd stops. Credentials
// are wrapped so that guard sees the connections they return.
func (s *Server) listenerOptions(lc config.Listener, guard *h2guard.Guard) ([]grpc.ServerOption, error) {
	var opts []grpc.ServerOption
	// Zero (a config that skipped defaults) keeps grpc-go's own values
	// rather than refusing every header or handshake.
	if lc.MaxHeaderListSize > 0 {
		opts = append(opts, grpc.MaxHeaderListSize(lc.MaxHeaderListSize))
	}
	if lc.HandshakeTimeout > 0 {
		opts = append(opts, grpc.ConnectionTimeout(lc.HandshakeTimeout.D()))
	}
	kp := keepalive.ServerParameters{
		Time:                  lc.Keepalive.Time.D(),
		Timeout:               lc.Keepalive.Timeout.D(),
		MaxConnectionAge:      lc.MaxConnectionAge.D(),
		MaxConnectionAgeGrace: lc.MaxConnectionAgeGrace.D(),
	}
	if lc.IdleTimeout != nil {
		kp.MaxConnectionIdle = lc.IdleTimeout.D()
	}
	opts = append(opts, grpc.KeepaliveParams(kp), grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
		MinTime:             lc.Keepalive.MinTime.D(),
		PermitWithoutStream: lc.Keepalive.PermitWithoutStream != nil && *lc.Keepalive.PermitWithoutStream,
	}))
	switch {
	case lc.TLS != nil:
		tc, err := loadServerTLS(lc.TLS, s.log.With("listener", lc.Name))
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(guardedCreds{credentials.NewTLS(tc), guard}))
	case lc.OriginalDst != nil:
		c := origdst.New(origdst.Options{
			Inbound:       lc.OriginalDst.Direction == config.DirectionInbound,
			DetectTimeout: lc.OriginalDst.DetectTimeout.D(),
			Logger:        s.log.With("component", "origdst", "listener", lc.Name),
		})
		s.dests.addCredentials(c)
		opts = append(opts, grpc.Creds(guardedCreds{c, guard}))
	}
	return opts, nil
}

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
