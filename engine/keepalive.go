package engine

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// Connection age, keepalive pings and client ping enforcement on client
// connections, with grpc-go's server semantics (internal/transport's
// http2Server.keepalive and handlePing), so that a listener's limits mean
// the same on both engines:
//
//   - MaxConnectionAge (±10% jitter) starts the graceful drain (GOAWAY
//     "max_age", PING, final GOAWAY); MaxConnectionAgeGrace later, the
//     connection is closed whatever is still running on it.
//   - KeepaliveTime after the last frame received, meshd sends a PING; if
//     still nothing arrived KeepaliveTimeout later, the connection is
//     closed (no GOAWAY: the peer is presumed gone).
//   - A client PING sooner than KeepaliveMinTime after its previous one
//     (or, without KeepalivePermitWithoutStream, any PING while no stream
//     is open sooner than 2h after the previous one) is a strike, unless
//     meshd sent the client response data since; the third strike gets
//     GOAWAY ENHANCE_YOUR_CALM "too_many_pings", which makes grpc-go
//     clients double their keepalive interval.
//
// The timers are time.AfterFunc timers, not a goroutine per connection:
// an idle connection costs no stack. Their state is guarded by conn.mu
// and they are stopped when serve returns; a callback that runs late
// finds the connection closed and does nothing. The reader records
// activity without a lock or a timer reset: one monotonic clock reading
// per read that may have blocked (frames already buffered arrived with
// the read that brought them), published with an atomic store.

const (
	// maxPingStrikes is how many policy-breaking client PINGs are
	// tolerated; the next one closes the connection (grpc-go's value).
	maxPingStrikes = 2
	// pingWithoutStreamInterval is the interval client PINGs must keep
	// when no stream is open and KeepalivePermitWithoutStream is false
	// (grpc-go's defaultPingTimeout).
	pingWithoutStreamInterval = 2 * time.Hour
	// keepalivePing is the payload of meshd's keepalive PINGs. Its ACK
	// needs no matching: any frame received counts as activity.
	keepalivePing = "meshdkap"
	// tooManyPings is grpc-go's GOAWAY debug data for the ping policy,
	// which grpc-go clients recognise.
	tooManyPings = "too_many_pings"
)

// errKeepaliveTimeout and errMaxConnectionAge end connections closed by
// the keepalive and age timers.
var (
	errKeepaliveTimeout = errors.New("engine: keepalive ping not acknowledged")
	errMaxConnectionAge = errors.New("engine: max connection age grace expired")
)

// keepalive is a client connection's age, keepalive and ping policy state.
type keepalive struct {
	// born is the origin of lastRead; time.Since gives a monotonic reading.
	born time.Time
	// track: keepalive pings are on, so the reader stamps lastRead.
	// Set before the reader starts.
	track bool
	// lastRead is when (since born) the reader last returned a frame after
	// a read that may have blocked. Written by the reader, read by the
	// keepalive timer.
	lastRead atomic.Int64

	// Guarded by conn.mu.
	pingTimer  *time.Timer
	ageTimer   *time.Timer
	graceTimer *time.Timer
	prevRead   int64 // lastRead when the keepalive timer last looked
	pingOut    bool  // a keepalive PING is unanswered

	// Reader goroutine only (onPing, which also holds conn.mu).
	lastPingAt  time.Duration // since born; 0: no PING yet
	pingStrikes int
	sentAtPing  uint64 // abuseScanner.dataFramesSent at the last PING
}

// armKeepalive starts the age and keepalive timers the Config asks for.
func (sc *serverConn) armKeepalive() {
	cfg := &sc.sh.cfg
	ka := &sc.ka
	ka.born = time.Now()
	ka.track = cfg.KeepaliveTime > 0
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if cfg.MaxConnectionAge > 0 {
		ka.ageTimer = time.AfterFunc(cfg.MaxConnectionAge+ageJitter(cfg.MaxConnectionAge), sc.onMaxAge)
	}
	if cfg.KeepaliveTime > 0 {
		ka.pingTimer = time.AfterFunc(cfg.KeepaliveTime, sc.onKeepalive)
	}
}

// stopKeepaliveLocked stops the timers; serve calls it once the
// connection is closed, so no callback can re-arm one. The caller holds
// conn.mu.
func (sc *serverConn) stopKeepaliveLocked() {
	ka := &sc.ka
	for _, t := range []*time.Timer{ka.pingTimer, ka.ageTimer, ka.graceTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

// ageJitter is grpc-go's getJitter: uniform in ±10% of d, so that clients
// connected at once (a rollout) do not all reconnect at once.
func ageJitter(d time.Duration) time.Duration {
	r := int64(d / 10)
	if r <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(2*r) - r)
}

// markRead records that a frame arrived. The reader calls it after a read
// that may have blocked.
func (ka *keepalive) markRead() {
	if ka.track {
		ka.lastRead.Store(int64(time.Since(ka.born)))
	}
}

// onMaxAge starts the graceful drain of a connection past its age and,
// with a grace period, arms the hard close.
func (sc *serverConn) onMaxAge() {
	sc.startDrainReason("max_age")
	grace := sc.sh.cfg.MaxConnectionAgeGrace
	if grace <= 0 {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closed {
		return
	}
	sc.ka.graceTimer = time.AfterFunc(grace, func() { sc.hardClose(errMaxConnectionAge) })
}

// onKeepalive runs KeepaliveTime after the last frame received (or
// KeepaliveTimeout after a keepalive PING): it re-arms if something
// arrived meanwhile, sends a PING if none is out, and closes the
// connection if the PING went unanswered.
func (sc *serverConn) onKeepalive() {
	cfg := &sc.sh.cfg
	ka := &sc.ka
	last := ka.lastRead.Load()
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	if last > ka.prevRead {
		ka.prevRead, ka.pingOut = last, false
		ka.pingTimer.Reset(time.Duration(last) + cfg.KeepaliveTime - time.Since(ka.born))
		sc.mu.Unlock()
		return
	}
	if ka.pingOut {
		sc.mu.Unlock()
		sc.sh.log.Debug("engine: closing client connection: keepalive ping not acknowledged", "remote", sc.nc.RemoteAddr(), "timeout", cfg.KeepaliveTimeout)
		sc.hardClose(errKeepaliveTimeout)
		return
	}
	ka.pingOut = true
	sc.pushCtrlLocked(op{kind: opPing, ping: [8]byte([]byte(keepalivePing))}, nil)
	ka.pingTimer.Reset(cfg.KeepaliveTimeout)
	sc.mu.Unlock()
}

// checkPingPolicyLocked applies KeepaliveMinTime and
// KeepalivePermitWithoutStream to a client PING (grpc-go's handlePing).
// The caller is the reader and holds conn.mu; the PING was already
// admitted by the flood rule (abuseScanner.onPing), so a flood is counted
// once, by whichever rule ends it.
func (sc *serverConn) checkPingPolicyLocked() error {
	cfg := &sc.sh.cfg
	if cfg.KeepaliveMinTime <= 0 {
		return nil
	}
	ka := &sc.ka
	now := time.Since(ka.born)
	prev := ka.lastPingAt
	ka.lastPingAt = now
	// Response data (or a new stream's headers) sent since the last PING
	// resets the strikes: a grpc-go client sends a BDP PING per burst of
	// data it receives. grpc-go resets them when it writes headers or
	// data; the reader tells from the connection window instead.
	if sent := sc.ab.dataFramesSent(sc.outWin); sent != ka.sentAtPing {
		ka.sentAtPing = sent
		ka.pingStrikes = 0
		return nil
	}
	if prev == 0 {
		return nil // the first PING
	}
	interval := cfg.KeepaliveMinTime
	if sc.numStreams == 0 && !cfg.KeepalivePermitWithoutStream {
		interval = pingWithoutStreamInterval
	}
	if now-prev < interval {
		ka.pingStrikes++
	}
	if ka.pingStrikes > maxPingStrikes {
		return connError{http2.ErrCodeEnhanceYourCalm, tooManyPings}
	}
	return nil
}
