package healthwatch

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Reconnect backoff of an endpoint connection (see [ConnectParams]).
const (
	// ReconnectBase is the wait before the second try of a connection that
	// failed: short, so that a backend restarting quickly is found quickly.
	ReconnectBase = 100 * time.Millisecond
	// reconnectMultiplier and reconnectJitter are grpc-go's defaults.
	reconnectMultiplier = 1.6
	reconnectJitter     = 0.2
	// reconnectSpread is the share of reconnectMax that the un-jittered
	// delay grows to. With ±20% jitter on top, tries are 53% to 80% of
	// reconnectMax apart once the backoff is at its cap: never more than
	// the cap, and at most 80% of it so that the connect, the handshake,
	// the health answer and the first call fit in the rest even on a busy
	// machine.
	reconnectSpread = 2.0 / 3
)

// ConnectParams returns the reconnect policy for a connection that Watch
// runs on (pass it to grpc.WithConnectParams): after a failed try the
// connection is tried again after ReconnectBase, then 1.6 times longer
// each time, jittered, but never more than 80% of reconnectMax apart, so a
// backend that starts listening is reached, judged and admitted within
// reconnectMax however long it was down. grpc-go's default grows to 120s,
// which after a long outage keeps a backend that is back out of traffic
// for minutes. Each try is bounded by connectTimeout (TCP connect and
// HTTP/2 handshake), so a black hole that accepts connections and never
// answers costs one connection per connectTimeout plus backoff, not a hot
// loop.
//
// A non-positive reconnectMax means 1s; a non-positive connectTimeout
// means 20s, grpc-go's default.
func ConnectParams(reconnectMax, connectTimeout time.Duration) grpc.ConnectParams {
	if reconnectMax <= 0 {
		reconnectMax = time.Second
	}
	if connectTimeout <= 0 {
		connectTimeout = 20 * time.Second
	}
	capDelay := time.Duration(float64(reconnectMax) * reconnectSpread)
	return grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  min(ReconnectBase, capDelay),
			Multiplier: reconnectMultiplier,
			Jitter:     reconnectJitter,
			MaxDelay:   capDelay,
		},
		MinConnectTimeout: connectTimeout,
	}
}
