package server

import (
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/h2guard"
)

// Every listener's client connections go through an h2guard.Guard, which
// closes connections that abuse HTTP/2 in ways grpc-go does not bound
// (rapid reset, SETTINGS / empty-frame / WINDOW_UPDATE floods) and counts
// frames, GOAWAYs and resets for /metrics. It must see plaintext frames:
// on a plaintext listener it wraps accepted connections (guardListener);
// behind TLS or original_dst detection it wraps what their handshake
// returns (guardedCreds).

// guardPlaintext puts g on the accepted connections of a listener without
// TLS or original_dst; the others get it through guardedCreds.
func guardPlaintext(lc config.Listener, l net.Listener, g *h2guard.Guard) net.Listener {
	if lc.TLS != nil || lc.OriginalDst != nil {
		return l
	}
	return g.Listener(l)
}

// guardedCreds runs the guard on the connection a handshake returns.
type guardedCreds struct {
	credentials.TransportCredentials
	g *h2guard.Guard
}

func (c guardedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		// ErrConnDispatched (an original_dst relay) included: the
		// connection is not meshd's any more.
		return conn, info, err
	}
	return c.g.Conn(conn), info, nil
}

func (c guardedCreds) Clone() credentials.TransportCredentials {
	return guardedCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// ListenerStats returns each listener's connection and HTTP/2 abuse
// counters by listener name (metrics.ListenerSource).
func (s *Server) ListenerStats() map[string]h2guard.Stats {
	out := make(map[string]h2guard.Stats, len(s.listeners))
	for _, l := range s.listeners {
		var st h2guard.Stats
		if fs, ok := l.srv.(frameServer); ok {
			// The frame engine's listeners have no guard in front
			// (frame.go): the engine counts for itself.
			st = frameListenerStats(fs.Server)
		} else {
			st = l.guard.Stats()
		}
		if ll, ok := l.capped.(*limitListener); ok {
			st.ConnsRejected = ll.rejected.Load()
		}
		out[l.cfg.Name] = st
	}
	return out
}
