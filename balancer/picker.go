package balancer

import "fmt"

// A policy builds immutable pickers for one load-balancing algorithm. The
// Cluster calls build on its update loop each time the set of pickable
// endpoints (or their weights) changes, and swaps the result in
// atomically; all precomputation (schedules, rings) happens there so that
// pick stays cheap.
type policy interface {
	// build returns a picker over eps, which is non-empty, sorted by ID
	// and not retained by the caller.
	build(eps []*Endpoint) picker
}

// A picker chooses one endpoint per call. It must be safe for concurrent
// use, lock-free, allocation-free and must not block.
type picker interface {
	pick(r pickRequest) *Endpoint
}

// pickRequest is what a picker needs from PickInfo. It is passed by value
// so that the caller's PickInfo does not escape to the heap through the
// interface call.
type pickRequest struct {
	// key is the hash key (ring_hash only); hasKey says whether the call
	// carried one.
	key    string
	hasKey bool
	// exclude is an endpoint to avoid if another one can be picked.
	exclude *Endpoint
}

// newPolicy returns the policy named by o.Policy; o has its defaults.
func newPolicy(o *Options) (policy, error) {
	switch o.Policy {
	case RoundRobin:
		return roundRobin{rand: o.Rand}, nil
	case LeastRequest:
		return leastRequest{rand: o.Rand}, nil
	case PeakEWMA:
		return peakEWMA{rand: o.Rand, tau: float64(o.PeakEWMA.Decay.Nanoseconds())}, nil
	case RingHash:
		return &ringHash{rand: o.Rand, perWeight: uint64(o.VirtualNodes)}, nil
	default:
		return nil, fmt.Errorf("balancer: unknown policy %q", o.Policy)
	}
}

// two returns two distinct indices in [0, n) from one random value, n >= 2.
// It uses the multiply-shift reduction, which is cheaper than % and as
// uniform for n far below 2³².
func two(r uint64, n int) (int, int) {
	i := int((r & 0xffffffff) * uint64(n) >> 32)
	j := int((r >> 32) * uint64(n-1) >> 32)
	if j >= i {
		j++
	}
	return i, j
}

// one returns an index in [0, n) from one random value.
func one(r uint64, n int) int {
	return int((r & 0xffffffff) * uint64(n) >> 32)
}
