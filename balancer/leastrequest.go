package balancer

// leastRequest is the least_request policy: power of two choices on
// outstanding calls per unit of weight, as Envoy's LEAST_REQUEST with an
// active-request bias of 1. Sampling two endpoints instead of scanning all
// keeps a pick O(1) and avoids the herd that "always the least loaded"
// causes when many pickers see the same stale counts.
type leastRequest struct {
	rand func() uint64
}

var _ policy = leastRequest{}

func (p leastRequest) build(eps []*Endpoint) picker {
	lr := &lrPicker{eps: eps, rand: p.rand, weights: make([]uint64, len(eps))}
	for i, e := range eps {
		lr.weights[i] = buildWeightOf(e)
	}
	return lr
}

type lrPicker struct {
	eps     []*Endpoint
	weights []uint64 // snapshot taken at build time, parallel to eps
	rand    func() uint64
}

var _ picker = (*lrPicker)(nil)

func (p *lrPicker) pick(r pickRequest) *Endpoint {
	n := len(p.eps)
	if n == 1 {
		return p.eps[0]
	}
	i, j := two(p.rand(), n)
	if p.eps[i] == r.exclude {
		return p.eps[j]
	}
	if p.eps[j] == r.exclude {
		return p.eps[i]
	}
	// (out_i+1)/w_i <= (out_j+1)/w_j, cross-multiplied. The +1 lets weights
	// decide between idle endpoints.
	if load(p.eps[i])*p.weights[j] <= load(p.eps[j])*p.weights[i] {
		return p.eps[i]
	}
	return p.eps[j]
}

// load is outstanding+1, never below 1 even if Done was over-called.
func load(e *Endpoint) uint64 {
	return uint64(max(e.outstanding.Load(), 0)) + 1
}
