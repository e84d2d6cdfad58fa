package config

import (
	"fmt"
	"time"

	"github.com/meshd/meshd/engine"
)

// Listener defaults. They are the values a listener gets when its config
// leaves the key out; the README's reference repeats them. Those the
// engine also applies to a zero engine.Config are the engine's constants,
// so there is one value for each.
const (
	// DefaultIdleTimeout closes client connections that carried no call
	// for an hour (Envoy's HTTP idle_timeout default), so abandoned
	// connections do not pin memory and file descriptors forever.
	DefaultIdleTimeout = time.Hour
	// DefaultKeepaliveTime is how long a connection may be silent before
	// meshd pings the client (grpc-go's default).
	DefaultKeepaliveTime = engine.DefaultKeepaliveTime
	// DefaultKeepaliveTimeout is how long meshd waits for a ping's answer
	// before closing the connection (grpc-go's default).
	DefaultKeepaliveTimeout = engine.DefaultKeepaliveTimeout
	// DefaultKeepaliveMinTime is the shortest interval between client pings
	// meshd tolerates. grpc-go's own default (5m) sends GOAWAY
	// "too_many_pings" to common client settings (30s, 1m); a proxy in front
	// of clients it does not control accepts them down to 10s.
	DefaultKeepaliveMinTime = 10 * time.Second
	// DefaultMaxHeaderListSize caps a request's header list at 64 KiB
	// (Envoy allows 60 KiB). grpc-go's own default, 16 MiB, would let one
	// client make meshd decode and forward 16 MiB of metadata per call,
	// and send 16 MiB of CONTINUATION frames per header block.
	DefaultMaxHeaderListSize = engine.DefaultMaxHeaderListSize
	// DefaultHandshakeTimeout is how long a new connection has to finish
	// its TLS handshake and send the HTTP/2 preface and first SETTINGS
	// (grpc-go's default, 2 minutes, lets slowloris connections that send
	// a byte a second sit on file descriptors for that long).
	DefaultHandshakeTimeout = engine.DefaultHandshakeTimeout
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
	// FloodProtection holds the thresholds of the rules that close client
	// connections abusing HTTP/2 (README "Hardening"). Each key left out
	// takes its one documented default.
	FloodProtection FloodProtection `yaml:"flood_protection"`
}

// FloodProtection are a listener's HTTP/2 abuse thresholds. A connection
// that breaks one gets GOAWAY ENHANCE_YOUR_CALM with the rule's name and is
// counted in meshd_listener_connections_closed_total{reason}.
type FloodProtection struct {
	// RapidResetMinStreams: once a client opened this many streams, half
	// of them reset within a second of opening closes the connection
	// (rapid_reset, CVE-2023-44487). Default 500 (Envoy's): clients that
	// cancel most of their calls early (hedging, deadlines of a few
	// milliseconds) pass 100 in normal operation.
	RapidResetMinStreams int `yaml:"rapid_reset_min_streams"`
	// MaxConsecutiveEmptyFrames: DATA, HEADERS or CONTINUATION frames with
	// no payload and no END_STREAM allowed in a row (empty_frames).
	// Default 10.
	MaxConsecutiveEmptyFrames int `yaml:"max_consecutive_empty_frames"`
	// SettingsBurst and SettingsPerSecond: the token bucket of non-ACK
	// SETTINGS frames (settings_flood). Defaults 100 and 10.
	SettingsBurst     int     `yaml:"settings_burst"`
	SettingsPerSecond float64 `yaml:"settings_per_second"`
	// PingBurst and PingsPerSecond: the token bucket of non-ACK PING
	// frames, which also earns two tokens per DATA frame sent to the
	// client (ping_flood). Defaults 100 and 1.
	PingBurst      int     `yaml:"ping_burst"`
	PingsPerSecond float64 `yaml:"pings_per_second"`
	// WindowUpdatesPerDataFrame: a client may send 100 + 2*(streams + this
	// * DATA frames sent to it) WINDOW_UPDATE frames (window_update_flood).
	// Default 10.
	WindowUpdatesPerDataFrame int `yaml:"window_updates_per_data_frame"`
	// ExtraFramesPerStream: a client may send this * (1 + streams)
	// PRIORITY and unknown-type frames (extra_frames). Default 100.
	ExtraFramesPerStream int `yaml:"extra_frames_per_stream"`
}

// Engine returns the thresholds as the engine takes them, every default
// applied (zero fields take engine.DefaultAbuseLimits' values there).
func (f FloodProtection) Engine() engine.AbuseLimits {
	return engine.AbuseLimits{
		MinResetStreams:           f.RapidResetMinStreams,
		MaxConsecutiveEmptyFrames: f.MaxConsecutiveEmptyFrames,
		SettingsBurst:             f.SettingsBurst,
		SettingsPerSecond:         f.SettingsPerSecond,
		PingBurst:                 f.PingBurst,
		PingsPerSecond:            f.PingsPerSecond,
		PingsPerDataFrame:         engine.DefaultAbuseLimits.PingsPerDataFrame,
		WindowUpdatesPerDataFrame: f.WindowUpdatesPerDataFrame,
		ExtraFramesPerStream:      f.ExtraFramesPerStream,
	}
}

// applyDefaults fills in the documented defaults, so /config_dump shows
// the thresholds in force.
func (f *FloodProtection) applyDefaults() {
	l := f.Engine().WithDefaults()
	*f = FloodProtection{RapidResetMinStreams: l.MinResetStreams, MaxConsecutiveEmptyFrames: l.MaxConsecutiveEmptyFrames,
		SettingsBurst: l.SettingsBurst, SettingsPerSecond: l.SettingsPerSecond, PingBurst: l.PingBurst, PingsPerSecond: l.PingsPerSecond,
		WindowUpdatesPerDataFrame: l.WindowUpdatesPerDataFrame, ExtraFramesPerStream: l.ExtraFramesPerStream}
}

// validate checks that no threshold is negative; p is the section's path.
func (f FloodProtection) validate(v *validator, p string) {
	for _, c := range []struct {
		key string
		val float64
	}{
		{"rapid_reset_min_streams", float64(f.RapidResetMinStreams)},
		{"max_consecutive_empty_frames", float64(f.MaxConsecutiveEmptyFrames)},
		{"settings_burst", float64(f.SettingsBurst)},
		{"settings_per_second", f.SettingsPerSecond},
		{"ping_burst", float64(f.PingBurst)},
		{"pings_per_second", f.PingsPerSecond},
		{"window_updates_per_data_frame", float64(f.WindowUpdatesPerDataFrame)},
		{"extra_frames_per_stream", float64(f.ExtraFramesPerStream)},
	} {
		if c.val < 0 {
			v.add(p+"."+c.key, "must not be negative (0 or absent: the default)")
		}
	}
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
	l.FloodProtection.validate(v, p+".flood_protection")
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
		if l.MeshTLS != "" && o.Direction != DirectionInbound {
			// An outbound listener takes the app's own plaintext calls;
			// meshd upgrades them to mTLS on the way out (clusters'
			// mesh_tls), and the peer's inbound listener takes them.
			v.add(p+".mesh_tls", "only an inbound original_dst listener takes mesh TLS; outbound calls are upgraded by the destination cluster's mesh_tls")
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
	l.FloodProtection.applyDefaults()
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
