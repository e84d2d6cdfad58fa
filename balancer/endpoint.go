package balancer

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// Endpoint is one backend instance of a Cluster: its connection and the
// per-call counters the pickers read. Pick hands out *Endpoint values;
// they stay valid (and their connection open) until Done is called for
// every successful Pick, even if discovery removes the endpoint meanwhile.
//
// The accessors are safe for concurrent use.
type Endpoint struct {
	id      string
	address string
	conn    *grpc.ClientConn

	// Hot fields, touched by Pick and Done on any goroutine.
	weight      atomic.Uint32
	outstanding atomic.Int64
	// removed is set (after the picker without this endpoint is in place)
	// once discovery dropped it; a Pick that raced with the swap sees it
	// and picks again.
	removed atomic.Bool
	// rttBits is the peak-EWMA latency estimate in nanoseconds (float64
	// bits) and rttStamp the cluster-clock time in Unix nanoseconds of its
	// last update. They are two words updated one after the other, so a
	// reader can see a new estimate with an old stamp; the error is one
	// decay step, which does not matter for choosing between two endpoints.
	rttBits  atomic.Uint64
	rttStamp atomic.Int64
	// consecutive counts failed calls in a row; requests and failures
	// count calls in the current failure-percentage interval.
	consecutive atomic.Int64
	requests    atomic.Int64
	failures    atomic.Int64
	// outlierFlag asks the update loop to judge the consecutive-failure
	// rule for this endpoint; it keeps Done from waking the loop more than
	// once per judgement.
	outlierFlag atomic.Bool

	// Control state, owned by the Cluster's update loop and guarded by
	// Cluster.mu.
	meta         map[string]string
	cancelWatch  context.CancelFunc
	health       healthState
	healthSource string // "health:watch", ... or "discovery" when disabled
	healthReason string
	ejectedUntil time.Time // zero unless ejected by outlier detection
	ejectReason  string
	multiplier   int       // current ejection-time multiplier
	ejections    int       // outlier ejections over the endpoint's life
	unejectedAt  time.Time // last time the multiplier was reduced or the endpoint returned
	draining     bool
	drainUntil   time.Time
	closed       bool
	since        time.Time // last change of state
	state        string    // last state logged

	// healthUnreachable marks a NotServing verdict that came from failing
	// to reach the endpoint rather than from its answer (panic.go).
	healthUnreachable bool

	// zone is the endpoint's locality from discovery ("" when unzoned);
	// see locality.go.
	zone string
	// Slow start (slowstart.go): wasServing is whether the endpoint was
	// serving at the last rebuild, servingSince when it last became so,
	// and buildWeight the weight the next picker build uses (0: the
	// discovery weight).
	wasServing   bool
	servingSince time.Time
	buildWeight  uint64
}

// healthState is what active health checking last said about an endpoint.
type healthState int

const (
	healthPending healthState = iota // no report yet
	healthServing
	healthNotServing
)

// Endpoint states shown in [EndpointStatus.State].
const (
	StateServing  = "serving"
	StateEjected  = "ejected"
	StatePending  = "pending"
	StateDraining = "draining"
)

// Sources shown in [EndpointStatus.Source] besides "health:<healthwatch
// source>".
const (
	SourceOutlier   = "outlier"
	SourceDiscovery = "discovery"
)

// ID is the endpoint's discovery ID.
func (e *Endpoint) ID() string { return e.id }

// Address is the host:port the endpoint was dialed at.
func (e *Endpoint) Address() string { return e.address }

// Conn is the endpoint's connection, shared by every call to it.
func (e *Endpoint) Conn() *grpc.ClientConn { return e.conn }

// Weight is the endpoint's current weight (0 from discovery reads as 1).
func (e *Endpoint) Weight() uint32 { return e.weight.Load() }

// Outstanding is the number of picked calls not yet reported Done.
func (e *Endpoint) Outstanding() int64 { return e.outstanding.Load() }

// pickable says whether the endpoint may take new calls when some
// endpoint is serving.
func (e *Endpoint) pickable() bool {
	return !e.draining && e.health == healthServing && e.ejectedUntil.IsZero()
}

// view derives the (state, source, reason) triple shown in status and
// logged on transitions. Health verdicts win over outlier ejections
// because they are the backend's own word.
func (e *Endpoint) view() (state, source, reason string) {
	switch {
	case e.draining:
		return StateDraining, SourceDiscovery, "removed by discovery"
	case e.health == healthNotServing:
		return StateEjected, e.healthSource, e.healthReason
	case !e.ejectedUntil.IsZero():
		return StateEjected, SourceOutlier, e.ejectReason
	case e.health == healthPending:
		return StatePending, SourceDiscovery, "awaiting first health report"
	default:
		return StateServing, e.healthSource, e.healthReason
	}
}

// buildWeightOf is the weight a weighted picker builds with: the slow-start
// scaled weight the rebuild set, else the discovery weight.
func buildWeightOf(e *Endpoint) uint64 {
	if e.buildWeight > 0 {
		return e.buildWeight
	}
	return uint64(weightOf(e))
}

// weightOf reads an endpoint's weight for a picker, treating 0 as 1.
func weightOf(e *Endpoint) uint32 {
	return max(e.weight.Load(), 1)
}
