package balancer

import "sync/atomic"

// maxScheduleWork bounds the work of building a weighted schedule
// (endpoints × schedule length). Larger weight sums are scaled down, which
// costs some precision for extreme weight ratios in large clusters but
// keeps a rebuild within a few milliseconds.
const maxScheduleWork = 1 << 22

// roundRobin is the round_robin policy.
type roundRobin struct {
	rand func() uint64
}

var _ policy = roundRobin{}

func (p roundRobin) build(eps []*Endpoint) picker {
	rr := &rrPicker{eps: eps}
	// Start at a random point so that frequent rebuilds do not keep
	// favouring the first endpoints in ID order.
	rr.next.Store(p.rand())
	weights := make([]uint64, len(eps))
	equal := true
	for i, e := range eps {
		weights[i] = buildWeightOf(e)
		equal = equal && weights[i] == weights[0]
	}
	if !equal {
		rr.schedule = schedule(weights)
	}
	return rr
}

// rrPicker cycles an atomic counter over the endpoints, or over a
// precomputed schedule of endpoint indices when weights differ: a pick is
// one atomic increment and one or two indexings.
type rrPicker struct {
	eps      []*Endpoint
	schedule []int32 // nil when all weights are equal
	next     atomic.Uint64
}

var _ picker = (*rrPicker)(nil)

func (p *rrPicker) pick(r pickRequest) *Endpoint {
	e := p.at(p.next.Add(1))
	if e == r.exclude && len(p.eps) > 1 {
		e = p.at(p.next.Add(1))
		if e == r.exclude {
			// A schedule can repeat the heaviest endpoint; take the
			// neighbour in ID order rather than looping.
			e = p.eps[(indexOf(p.eps, e)+1)%len(p.eps)]
		}
	}
	return e
}

func (p *rrPicker) at(n uint64) *Endpoint {
	if p.schedule == nil {
		return p.eps[n%uint64(len(p.eps))]
	}
	return p.eps[p.schedule[n%uint64(len(p.schedule))]]
}

func indexOf(eps []*Endpoint, e *Endpoint) int {
	for i, x := range eps {
		if x == e {
			return i
		}
	}
	return 0
}

// schedule returns a smooth weighted round-robin order of indices into
// weights, nginx's algorithm: index i appears weights[i] times (after
// reduction by the common divisor, and scaling if the schedule would be
// too costly to build), and each turn goes to the entry with the highest
// running credit, so a weight-7 endpoint is interleaved with the others
// (7,7,2,7,1,7,7,2,7,7 for 1:2:7) instead of taking seven picks in a row.
// Precomputing it at rebuild time turns the per-pick scheduler into an
// atomic increment.
func schedule(weights []uint64) []int32 {
	g := weights[0]
	var sum uint64
	for _, w := range weights {
		g = gcd(g, w)
		sum += w
	}
	for i := range weights {
		weights[i] /= g
	}
	sum /= g
	n := uint64(len(weights))
	if limit := max(maxScheduleWork/n, n); sum > limit {
		var scaled uint64
		for i, w := range weights {
			weights[i] = max(1, w*limit/sum)
			scaled += weights[i]
		}
		sum = scaled
	}
	credit := make([]int64, len(weights))
	out := make([]int32, sum)
	for s := range out {
		best := 0
		for i, w := range weights {
			credit[i] += int64(w)
			if credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= int64(sum)
		out[s] = int32(best)
	}
	return out
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
