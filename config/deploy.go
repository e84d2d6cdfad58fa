package config

import (
	"fmt"
	"time"
)

// Listener defaults. They are the values a listener gets when its config
// leaves the key out; the README's reference repeats them.
const (
	// DefaultIdleTimeout closes client connections that carried no call
	// for an hour (Envoy's HTTP idle_timeout default), so abandoned
	// connections do not pin memory and file descriptors forever.
	DefaultIdleTimeout = time.Hour
	// DefaultKeepaliveTime is how long a connection may be silent before
	// meshd pings the client (grpc-go's default).
	DefaultKeepaliveTime = 2 * time.Hour
	// DefaultKeepaliveTimeout is how long meshd waits for a ping's answer
	// before closing the connection (grpc-go's default).
	DefaultKeepaliveTimeout = 20 * time.Second
	// DefaultKeepaliveMinTime is the shortest interval between client pings
	// meshd tolerates. grpc-go's own default (5m) sends GOAWAY
	// "too_many_pings" to common client settings (30s, 1m); a proxy in front
	// of clients it does not control accepts them down to 10s.
	DefaultKeepaliveMinTime = 10 * time.Second
	// DefaultMaxHeaderListSize caps a request's header list at 64 KiB
	// (Envoy allows 60 KiB). grpc-go's own default, 16 MiB, would let one
	// client make meshd decode and forward 16 MiB of metadata per call,
	// and send 16 MiB of CONTINUATION frames per header block.
	DefaultMaxHeaderListSize = 64 << 10
	// DefaultHandshakeTimeout is how long a new connection has to finish
	// its TLS handshake and send the HTTP/2 preface and first SETTINGS
	// (grpc-go's default, 2 minutes, lets slowloris connections that send
	// a byte a second sit on file descriptors for that long).
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDetectTimeout is how long an original_dst listener waits for a
	// connection's first bytes before treating it as opaque TCP (a
	// server-speaks-first protocol such as SMTP or MySQL).
	DefaultDetectTimeout = time.Second
	// OriginalDstCluster is the built-in cluster whose only endpoint is each
	// call's original destination: routes may name it, and outbound calls
	// that no route or cluster claims go to it.
	OriginalDstCluster = "original_dst"
	// RouteInbound and RouteOriginalDst name the routes meshd makes up for
	// transparent calls that no configured route took (an inbound call to
	// the local application; an outbound call to the cluster owning its
	// destination, or to the destination itself). They show in logs,
	// metrics and traces, and route policies are looked up by route name,
	// so no configured route may take them.
	RouteInbound     = "inbound"
	RouteOriginalDst = "original_dst"
)

// ListenerLimits are a listener's connection limits and keepalive policy.
// They are inlined into Listener: the keys sit directly under a listener.
type ListenerLimits struct {
	// MaxConnections caps concurrent client connections on the listener. A
	// connection over the cap is closed as soon as it is accepted (its
	// client sees UNAVAILABLE and may retry elsewhere) rather than left
	// waiting in the kernel's backlog. Default 0: no cap.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a client connection (GOAWAY, then close) once it
	// has had no call in flight for this long. Default 1h; "0s" disables.
	IdleTimeout *Duration `yaml:"idle_timeout"`
	// MaxConnectionAge closes connections (GOAWAY) after this long, so that
	// long-lived clients spread again over replicas added since they
	// connected (an HPA scaling an edge Deployment up). Default 0: never.
	MaxConnectionAge Duration `yaml:"max_connection_age"`
	// MaxConnectionAgeGrace is how long calls still running on a connection
	// past MaxConnectionAge may take before it is closed. Default 0: no
	// limit.
	MaxConnectionAgeGrace Duration `yaml:"max_connection_age_grace"`
	// Keepalive is HTTP/2 ping behaviour and its enforcement on clients.
	Keepalive Keepalive `yaml:"keepalive"`
	// MaxHeaderListSize caps the size of a request's header list in bytes,
	// as HTTP/2 counts it (decoded names and values plus 32 per field). It
	// is advertised to clients in SETTINGS. A request over it is refused
	// (RST_STREAM, or the connection is closed when the excess spans
	// CONTINUATION frames). Default 65536; at least 1024.
	MaxHeaderListSize uint32 `yaml:"max_header_list_size"`
	// HandshakeTimeout closes connections that have not completed the TLS
	// handshake and sent the HTTP/2 preface and first SETTINGS frame in
	// this long. Default 10s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
}

// Keepalive is a listener's HTTP/2 keepalive policy.
type Keepalive struct {
	// Time: after this long without activity meshd pings the client.
	// Default 2h.
	Time Duration `yaml:"time"`
	// Timeout: a ping unanswered this long closes the connection.
	// Default 20s.
	Timeout Duration `yaml:"timeout"`
	// MinTime is the shortest ping interval a client may use; a client that
	// pings more often gets GOAWAY (too_many_pings). Default 10s.
	MinTime Duration `yaml:"min_time"`
	// PermitWithoutStream allows client pings on connections with no call
	// in flight. Default true.
	PermitWithoutStream *bool `yaml:"permit_without_stream"`
}

// OriginalDst configures a listener that receives connections redirected by
// iptables REDIRECT rules. meshd reads each connection's original
// destination (SO_ORIGINAL_DST):
//
//   - direction outbound: a call goes to the first route that matches it
//     (routes may test the destination with the ":original-dst" header
//     match); else to the cluster one of whose endpoints is the original
//     destination (a Consul service instance the app dialled); else to the
//     original destination itself, as if meshd were not there.
//   - direction inbound: every call goes to the original destination, the
//     local application.
//
// A connection that does not start with the HTTP/2 preface is not gRPC: it
// is relayed as opaque TCP to its original destination. A connection that
// was not redirected (no original destination) is routed by method alone.
type OriginalDst struct {
	// Direction is "outbound" (default) or "inbound".
	Direction string `yaml:"direction"`
	// DetectTimeout is how long to wait for a client's first bytes before
	// relaying the connection as opaque TCP. Default 1s.
	DetectTimeout Duration `yaml:"detect_timeout"`
}

// Directions of an original_dst listener.
const (
	DirectionOutbound = "outbound"
	DirectionInbound  = "inbound"
)

// listenerLimits validates one listener's limits, keepalive and original_dst
// sections; p is the listener's field path.
func (v *validator) listenerLimits(p string, l *Listener) {
	if l.MaxConnections < 0 {
		v.add(p+".max_connections", "must not be negative")
	}
	if l.MaxHeaderListSize != 0 && l.MaxHeaderListSize < 1024 {
		v.add(p+".max_header_list_size", "must be at least 1024 (a gRPC call's own headers take a few hundred bytes)")
	}
	if l.HandshakeTimeout < 0 {
		v.add(p+".handshake_timeout", "must not be negative")
	}
	if l.MaxConnectionAgeGrace > 0 && l.MaxConnectionAge == 0 {
		v.add(p+".max_connection_age_grace", "needs max_connection_age")
	}
	if k := l.Keepalive; k.Timeout > 0 && k.Time > 0 && k.Timeout > k.Time {
		v.add(p+".keepalive.timeout", "longer than keepalive.time (%s > %s)", k.Timeout.D(), k.Time.D())
	}
	if o := l.OriginalDst; o != nil {
		switch o.Direction {
		case "", DirectionOutbound, DirectionInbound:
		default:
			v.add(p+".original_dst.direction", "want outbound or inbound, got %q", o.Direction)
		}
		if l.TLS != nil {
			// Redirected connections come from the app in plaintext; TLS
			// from the app is relayed as opaque TCP, never terminated.
			v.add(p+".original_dst", "cannot be combined with tls")
		}
	}
}

// reserveOriginalDst makes the built-in original_dst cluster known to route
// validation and refuses a user cluster or route that takes a built-in name.
func (v *validator) reserveOriginalDst(clusters map[string]bool) {
	for i, c := range v.c.Clusters {
		if c.Name == OriginalDstCluster {
			v.add(fmt.Sprintf("clusters[%d].name", i), "%q is the built-in cluster of original destinations; choose another name", c.Name)
		}
	}
	for i, r := range v.c.Routes {
		if r.Name == RouteInbound || r.Name == RouteOriginalDst {
			v.add(fmt.Sprintf("routes[%d].name", i), "%q is the name of meshd's built-in route for transparent calls; choose another name", r.Name)
		}
	}
	clusters[OriginalDstCluster] = true
}

// DefaultListenerLimits returns the limits a listener gets when its config
// sets none.
func DefaultListenerLimits() ListenerLimits {
	var l Listener
	l.applyLimitDefaults()
	return l.ListenerLimits
}

// applyLimitDefaults fills in a listener's documented limit defaults.
func (l *Listener) applyLimitDefaults() {
	if l.IdleTimeout == nil {
		d := Duration(DefaultIdleTimeout)
		l.IdleTimeout = &d
	}
	if l.MaxHeaderListSize == 0 {
		l.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = Duration(DefaultHandshakeTimeout)
	}
	k := &l.Keepalive
	if k.Time == 0 {
		k.Time = Duration(DefaultKeepaliveTime)
	}
	if k.Timeout == 0 {
		k.Timeout = Duration(DefaultKeepaliveTimeout)
	}
	if k.MinTime == 0 {
		k.MinTime = Duration(DefaultKeepaliveMinTime)
	}
	if k.PermitWithoutStream == nil {
		t := true
		k.PermitWithoutStream = &t
	}
	if o := l.OriginalDst; o != nil {
		if o.Direction == "" {
			o.Direction = DirectionOutbound
		}
		if o.DetectTimeout == 0 {
			o.DetectTimeout = Duration(DefaultDetectTimeout)
		}
	}
}
