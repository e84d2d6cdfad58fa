package balancer

import (
	"maps"
	"time"
)

// ClusterStatus is a point-in-time view of a Cluster for the admin API
// and metrics.
type ClusterStatus struct {
	// Name and Policy are the cluster's.
	Name, Policy string
	// Ready says whether the first discovery snapshot arrived.
	Ready bool
	// Endpoints lists the live endpoints sorted by ID, then the draining
	// ones.
	Endpoints []EndpointStatus
	// Healthy counts the endpoints in state "serving"; Total the live ones
	// (draining endpoints are not counted).
	Healthy, Total int
	// HealthyPanicThreshold is the configured panic threshold in percent
	// (0: panic mode off).
	HealthyPanicThreshold int
	// Panic says whether the cluster is in panic mode now: fewer than
	// HealthyPanicThreshold percent of its endpoints with a health verdict
	// are serving, so calls spread over every endpoint that answered.
	Panic bool
	// PanicEntered counts how often the cluster entered panic mode, and
	// PanicPicks the calls picked while in it (Envoy's lb_healthy_panic).
	PanicEntered, PanicPicks uint64
	// SlowStart is the configured slow-start window (0: off; ring_hash
	// never ramps).
	SlowStart time.Duration
	// LocalZone is the zone-aware balancing's local zone ("" : off), and
	// PickZone the zone picks stay in now: LocalZone while it is healthy
	// enough, "" when calls spread over every zone.
	LocalZone, PickZone string
}

// EndpointStatus is one endpoint in a ClusterStatus.
type EndpointStatus struct {
	// ID, Address and Weight are as discovery announced them.
	ID, Address string
	Weight      uint32
	// State is StateServing, StateEjected, StatePending or StateDraining.
	State string
	// Source says who decided State: "health:watch", "health:check",
	// "health:absent" (the healthwatch mode that reported), SourceOutlier
	// or SourceDiscovery (added and not yet reported on, health checking
	// disabled, or removed).
	Source string
	// Reason is a human explanation, e.g. "NOT_SERVING" or "5 consecutive
	// failures; ejected for 5s".
	Reason string
	// Since is when State last changed (cluster clock).
	Since time.Time
	// Outstanding is the number of calls in flight.
	Outstanding int64
	// Ejections counts outlier ejections over the endpoint's life.
	Ejections int
	// Meta is the discovery metadata (a copy).
	Meta map[string]string
	// Zone is the endpoint's zone from discovery ("" : unzoned).
	Zone string
	// EffectiveWeight is the weight calls are balanced by now: Weight,
	// or less while the endpoint ramps up in slow start.
	EffectiveWeight float64
	// SlowStartUntil is when the endpoint's slow start ends; zero when it
	// is not ramping.
	SlowStartUntil time.Time
}

// Status returns the cluster's current state. It waits for an update
// batch in progress, never for calls.
func (c *Cluster) Status() ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ClusterStatus{
		Name:      c.opts.Name,
		Policy:    c.opts.Policy,
		Ready:     c.synced.Load(),
		Total:     len(c.order),
		Endpoints: make([]EndpointStatus, 0, len(c.order)+len(c.draining)),
	}
	st.HealthyPanicThreshold, st.Panic = c.opts.HealthyPanicThreshold, c.panicking
	st.PanicEntered, st.PanicPicks = c.panics, c.panicPicks.Load()
	if c.slowStartOn {
		st.SlowStart = c.opts.SlowStart
	}
	st.LocalZone, st.PickZone = c.opts.Locality.LocalZone, c.pickZone
	now := c.now()
	add := func(e *Endpoint) {
		state, source, reason := e.view()
		if state == StateServing {
			st.Healthy++
		}
		st.Endpoints = append(st.Endpoints, EndpointStatus{
			ID:          e.id,
			Address:     e.address,
			Weight:      e.weight.Load(),
			State:       state,
			Source:      source,
			Reason:      reason,
			Since:       e.since,
			Outstanding: e.outstanding.Load(),
			Ejections:   e.ejections,
			Meta:        maps.Clone(e.meta),
			Zone:        e.zone,
		})
		es := &st.Endpoints[len(st.Endpoints)-1]
		es.EffectiveWeight = c.effectiveWeight(e, now)
		if state == StateServing {
			es.SlowStartUntil = c.slowStartUntil(e, now)
		}
	}
	for _, e := range c.order {
		add(e)
	}
	for _, e := range c.draining {
		add(e)
	}
	return st
}

// Serving returns the live endpoints that may take calls, in ID order,
// for meshd's own calls to the backends (merged reflection asks one of
// them what it serves through its Conn). Calls go through Pick instead.
func (c *Cluster) Serving() []*Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Endpoint
	for _, e := range c.order {
		if e.pickable() && e.conn != nil {
			out = append(out, e)
		}
	}
	return out
}
