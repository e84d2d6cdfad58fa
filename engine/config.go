package engine

import (
	"context"
	"log/slog"
	"net"
	"time"
)

// Defaults applied to zero Config fields.
const (
	DefaultMaxConcurrentStreams = 1000
	DefaultInitialWindowSize    = 1 << 20
	DefaultConnWindowSize       = 16 << 20
	DefaultMaxFrameSize         = 16 << 10
	DefaultMaxHeaderListSize    = 64 << 10
	DefaultMaxRecvMsgSize       = 16 << 20
	DefaultConnsPerBackend      = 2
	DefaultDialTimeout          = 5 * time.Second
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultKeepaliveTime        = 2 * time.Hour
	DefaultKeepaliveTimeout     = 20 * time.Second
)

// Config tunes a Server and its upstream Pool. The zero value of every field
// selects the documented default, so Config{} is a working configuration.
type Config struct {
	// MaxConcurrentStreams is advertised to clients as
	// SETTINGS_MAX_CONCURRENT_STREAMS; streams opened beyond it are refused
	// with RST_STREAM(REFUSED_STREAM), which gRPC clients retry transparently.
	// Default 1000.
	MaxConcurrentStreams uint32

	// InitialWindowSize is the per-stream flow-control window meshd grants to
	// clients (request direction) and to backends (response direction).
	// meshd returns window only for bytes it has forwarded, so this bounds
	// the data meshd buffers per stream and direction. Default 1 MiB; values
	// below 65535 are raised to 65535 (the HTTP/2 default, which a peer may
	// use before it has seen meshd's SETTINGS).
	InitialWindowSize uint32

	// ConnWindowSize is the connection-level flow-control window meshd grants
	// to each client and backend connection; it bounds the data buffered per
	// connection. Default 16 MiB; never below InitialWindowSize.
	ConnWindowSize uint32

	// MaxFrameSize is the largest frame payload meshd accepts
	// (SETTINGS_MAX_FRAME_SIZE) and the size of its largest pooled DATA
	// buffers (smaller frames get smaller ones). Default 16384, the HTTP/2
	// minimum; at most 1<<24-1.
	MaxFrameSize uint32

	// MaxHeaderListSize is advertised to clients as
	// SETTINGS_MAX_HEADER_LIST_SIZE and enforced on request and response
	// header and trailer blocks, counted as HTTP/2 counts them (name,
	// value and 32 bytes per field). Default 64 KiB (Envoy allows 60 KiB;
	// grpc-go's 16 MiB would let one client make meshd decode and forward
	// 16 MiB of metadata per call). A request over it gets 431 /
	// RESOURCE_EXHAUSTED. Header blocks are decoded up to four times it,
	// and backends are told that size: a response between the two is read
	// and ends its call with INTERNAL naming the limit (a grpc-go backend
	// told the limit itself would reset the stream with INTERNAL_ERROR and
	// no reason); only a backend that ignores the advertised size can make
	// meshd give up on a header block, which ends that backend connection.
	MaxHeaderListSize uint32

	// MaxRecvMsgSize is the largest gRPC message (as declared by its 5-byte
	// length prefix) meshd forwards from a client; a larger one ends the call
	// with RESOURCE_EXHAUSTED and cancels the backend stream. Default 16 MiB.
	MaxRecvMsgSize int

	// MaxSendMsgSize is the largest gRPC message meshd forwards from a
	// backend to a client. Default 0: no limit (clients enforce their own).
	MaxSendMsgSize int

	// ConnsPerBackend is how many HTTP/2 connections the Pool keeps to each
	// backend address, so that their reader and writer goroutines spread
	// over cores. More are opened when the backend's
	// SETTINGS_MAX_CONCURRENT_STREAMS is reached. Default 2.
	ConnsPerBackend int

	// DialTimeout bounds dialing a backend and receiving its SETTINGS.
	// Default 5s.
	DialTimeout time.Duration

	// Dial, if set, opens backend connections instead of a plain TCP dial,
	// e.g. to return a *tls.Conn that completed its handshake with ALPN
	// "h2" (HTTP/2 is then spoken on it directly). ctx carries DialTimeout.
	// Default: net.Dialer over TCP (h2c with prior knowledge).
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	// IdleTimeout closes client and backend connections that had no open
	// stream for this long (client connections get a graceful GOAWAY with
	// debug data "max_idle", as grpc-go's MaxConnectionIdle sends).
	// Default 0: idle connections are kept.
	IdleTimeout time.Duration

	// MaxConnectionAge drains client connections (graceful GOAWAY with
	// debug data "max_age": no new streams, the open ones may finish) after
	// this long, plus or minus 10% of jitter, as grpc-go's
	// keepalive.ServerParameters.MaxConnectionAge does. Default 0: never.
	MaxConnectionAge time.Duration

	// MaxConnectionAgeGrace closes a connection this long after
	// MaxConnectionAge drained it, whatever streams are still open.
	// Default 0: no limit (the connection closes when its last stream
	// ends).
	MaxConnectionAgeGrace time.Duration

	// KeepaliveTime: after this long without any frame from a client, meshd
	// sends it a PING. Default 2h (grpc-go's and meshd's config default);
	// negative disables keepalive pings.
	KeepaliveTime time.Duration

	// KeepaliveTimeout: a client that sends nothing (not even the PING's
	// ACK) for this long after a keepalive PING has its connection closed.
	// Default 20s.
	KeepaliveTimeout time.Duration

	// KeepaliveMinTime is the shortest interval between a client's PINGs
	// that grpc-go's keepalive enforcement allows: a PING sooner than that
	// after the previous one is a strike, unless response data was sent
	// to the client since, and the third strike closes the connection
	// with GOAWAY ENHANCE_YOUR_CALM "too_many_pings". Default 0: no
	// interval enforcement (the PING flood rule, see AbusePingFlood,
	// still applies). Unlike grpc-go (whose zero means 5m), zero is off so
	// that Config{} answers only floods; meshd's
	// listener config always sets it (default 10s).
	KeepaliveMinTime time.Duration

	// KeepalivePermitWithoutStream allows client PINGs at KeepaliveMinTime
	// on a connection with no open stream. When false (grpc-go's
	// default), such a PING sooner than 2h after the previous one is a
	// strike. Only with KeepaliveMinTime set.
	KeepalivePermitWithoutStream bool

	// HandshakeTimeout closes client connections that have not completed
	// their TLS handshake (when the listener's connections are TLS) and
	// sent the HTTP/2 preface and first SETTINGS frame in this long, so a
	// client that connects and sends nothing, or a byte at a time, does
	// not hold a connection. Default 10s.
	HandshakeTimeout time.Duration

	// ConnContext, if set, derives a client connection's context once its
	// handshake is done (for a TLS connection: after the TLS handshake, so
	// the peer's verified certificate is known). The context it returns
	// is the one Director.Direct gets for every call of the connection,
	// as net/http's Server.ConnContext does; meshd puts the caller's mesh
	// identity there. It runs on the connection's reader goroutine before
	// any stream is read, and must not block.
	ConnContext func(ctx context.Context, nc net.Conn) context.Context

	// GRPCWeb lets gRPC-Web requests (POST with content type
	// application/grpc-web, +proto or -text) and CORS preflights
	// (OPTIONS) through as opaque streams (Request.GRPCWeb) instead of
	// answering them 415 / 405: meshd's grpc_web listeners, whose
	// Director hands them to the gRPC-Web translator. Only requests that
	// are not gRPC look at it: native calls pay nothing. Default false.
	GRPCWeb bool

	// Abuse holds the thresholds of the flood and reset rules applied to
	// client connections (abuse.go). Zero fields take the defaults of
	// DefaultAbuseLimits.
	Abuse AbuseLimits

	// Logger receives connection-level events (protocol errors, dial
	// failures). The engine adds "component"="engine"; the caller adds
	// only what the engine cannot know (the listener). Default: discard.
	Logger *slog.Logger

	// abuse holds the Server's client connection counters (AbuseStats).
	// withDefaults allocates it, so each NewServer gets its own.
	abuse *abuseCounters
}

// withDefaults returns cfg with every zero field replaced by its default and
// out-of-range values clamped.
func (cfg Config) withDefaults() Config {
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.InitialWindowSize == 0 {
		cfg.InitialWindowSize = DefaultInitialWindowSize
	}
	if cfg.InitialWindowSize < 65535 {
		cfg.InitialWindowSize = 65535
	}
	if cfg.InitialWindowSize > maxWindow {
		cfg.InitialWindowSize = maxWindow
	}
	if cfg.ConnWindowSize == 0 {
		cfg.ConnWindowSize = DefaultConnWindowSize
	}
	if cfg.ConnWindowSize < cfg.InitialWindowSize {
		cfg.ConnWindowSize = cfg.InitialWindowSize
	}
	if cfg.ConnWindowSize > maxWindow {
		cfg.ConnWindowSize = maxWindow
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = DefaultMaxFrameSize
	}
	if cfg.MaxFrameSize < DefaultMaxFrameSize {
		cfg.MaxFrameSize = DefaultMaxFrameSize
	}
	if cfg.MaxFrameSize > 1<<24-1 {
		cfg.MaxFrameSize = 1<<24 - 1
	}
	if cfg.MaxHeaderListSize == 0 {
		cfg.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if cfg.MaxRecvMsgSize <= 0 {
		cfg.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if cfg.MaxSendMsgSize < 0 {
		cfg.MaxSendMsgSize = 0
	}
	if cfg.ConnsPerBackend <= 0 {
		cfg.ConnsPerBackend = DefaultConnsPerBackend
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout < 0 {
		cfg.IdleTimeout = 0
	}
	if cfg.MaxConnectionAge < 0 {
		cfg.MaxConnectionAge = 0
	}
	if cfg.MaxConnectionAgeGrace < 0 {
		cfg.MaxConnectionAgeGrace = 0
	}
	if cfg.KeepaliveTime == 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime // negative stays: off
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if cfg.KeepaliveMinTime < 0 {
		cfg.KeepaliveMinTime = 0
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	cfg.Abuse = cfg.Abuse.WithDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.abuse == nil {
		cfg.abuse = new(abuseCounters)
	}
	return cfg
}

// AbuseLimits are the thresholds of the rules that close a client
// connection abusing HTTP/2 (AbuseReason). Each has one default, after
// Envoy's HTTP/2 protections; zero selects it.
type AbuseLimits struct {
	// MinResetStreams: once a client opened this many streams, half of
	// them reset within a second of opening (premature resets) closes the
	// connection with GOAWAY ENHANCE_YOUR_CALM "rapid_reset"
	// (CVE-2023-44487). Default 500, Envoy's: a client that cancels most
	// of its calls early (hedging, deadlines in the low milliseconds, a
	// chaos drill) crosses 100 in normal operation and would lose its
	// connection and every call on it, while an attacker at 500 streams is
	// stopped after a few milliseconds of work.
	MinResetStreams int
	// MaxConsecutiveEmptyFrames DATA, HEADERS or CONTINUATION frames with
	// no payload and no END_STREAM may follow each other. Default 10.
	MaxConsecutiveEmptyFrames int
	// SettingsBurst and SettingsPerSecond are the token bucket of non-ACK
	// SETTINGS frames. Defaults 100 and 10.
	SettingsBurst     int
	SettingsPerSecond float64
	// PingBurst and PingsPerSecond are the token bucket of non-ACK PING
	// frames, which also earns PingsPerDataFrame tokens per DATA frame
	// sent to the client (a grpc-go client sends a BDP-estimation ping per
	// burst of data it receives). Defaults 100, 1 and 2.
	PingBurst         int
	PingsPerSecond    float64
	PingsPerDataFrame float64
	// WindowUpdatesPerDataFrame: a client may send 100 + 2*(streams +
	// this * DATA frames sent to it) WINDOW_UPDATE frames. Default 10.
	WindowUpdatesPerDataFrame int
	// ExtraFramesPerStream: a client may send this * (1 + streams)
	// PRIORITY and unknown-type frames. Default 100.
	ExtraFramesPerStream int
}

// DefaultAbuseLimits are the thresholds a zero AbuseLimits field takes.
var DefaultAbuseLimits = AbuseLimits{
	MinResetStreams:           500,
	MaxConsecutiveEmptyFrames: 10,
	SettingsBurst:             100,
	SettingsPerSecond:         10,
	PingBurst:                 100,
	PingsPerSecond:            1,
	PingsPerDataFrame:         2,
	WindowUpdatesPerDataFrame: 10,
	ExtraFramesPerStream:      100,
}

// WithDefaults returns l with every zero (or negative) field set to its
// DefaultAbuseLimits value.
func (l AbuseLimits) WithDefaults() AbuseLimits {
	d := DefaultAbuseLimits
	setInt := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setFloat := func(v *float64, def float64) {
		if *v <= 0 {
			*v = def
		}
	}
	setInt(&l.MinResetStreams, d.MinResetStreams)
	setInt(&l.MaxConsecutiveEmptyFrames, d.MaxConsecutiveEmptyFrames)
	setInt(&l.SettingsBurst, d.SettingsBurst)
	setFloat(&l.SettingsPerSecond, d.SettingsPerSecond)
	setInt(&l.PingBurst, d.PingBurst)
	setFloat(&l.PingsPerSecond, d.PingsPerSecond)
	setFloat(&l.PingsPerDataFrame, d.PingsPerDataFrame)
	setInt(&l.WindowUpdatesPerDataFrame, d.WindowUpdatesPerDataFrame)
	setInt(&l.ExtraFramesPerStream, d.ExtraFramesPerStream)
	return l
}
