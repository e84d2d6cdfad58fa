package balancer

import "math"

// peakEWMA is the peak_ewma policy (Finagle's and Linkerd's "peak EWMA"):
// power of two choices on cost = latency estimate × (outstanding+1) /
// weight. The estimate jumps to any sample above it, so a backend that
// turns slow is avoided after one slow call, and otherwise moves toward
// new samples with weight 1-e^(-Δt/τ), so it recovers over about τ. The
// estimate also fades toward zero while an endpoint gets no samples, so an
// endpoint that was avoided is eventually tried again.
type peakEWMA struct {
	rand func() uint64
	tau  float64 // nanoseconds
}

var _ policy = peakEWMA{}

func (p peakEWMA) build(eps []*Endpoint) picker {
	pe := &ewmaPicker{eps: eps, rand: p.rand, tau: p.tau, weights: make([]float64, len(eps))}
	for i, e := range eps {
		pe.weights[i] = float64(buildWeightOf(e))
	}
	return pe
}

type ewmaPicker struct {
	eps     []*Endpoint
	weights []float64
	rand    func() uint64
	tau     float64
}

var _ picker = (*ewmaPicker)(nil)

func (p *ewmaPicker) pick(r pickRequest) *Endpoint {
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
	if p.cheaper(i, j) {
		return p.eps[i]
	}
	return p.eps[j]
}

// cheaper says whether endpoint i costs no more than endpoint j now. Each
// cost is rtt·e^(-(now-stamp)/τ)·load/weight; in their ratio the clock
// cancels out, leaving e^((stamp_i-stamp_j)/τ). So a pick needs one exp
// and no clock read, where computing both costs would need two exps and
// time.Now.
func (p *ewmaPicker) cheaper(i, j int) bool {
	a, b := p.eps[i], p.eps[j]
	ci := math.Float64frombits(a.rttBits.Load()) * float64(load(a)) / p.weights[i]
	cj := math.Float64frombits(b.rttBits.Load()) * float64(load(b)) / p.weights[j]
	if d := a.rttStamp.Load() - b.rttStamp.Load(); d != 0 {
		// Clamped so that stamps hours apart cannot overflow to +Inf
		// (and 0·Inf to NaN); e^±700 already decides any comparison.
		ci *= math.Exp(min(max(float64(d)/p.tau, -700), 700))
	}
	return ci <= cj
}

// observeRTT folds one call's latency into e's estimate. It runs in Done
// on any goroutine, so it updates with compare-and-swap.
func observeRTT(e *Endpoint, rtt float64, now int64, tau float64) {
	rtt = max(rtt, 0)
	for {
		old := e.rttBits.Load()
		prev := math.Float64frombits(old)
		next := rtt
		if rtt < prev {
			elapsed := float64(now - e.rttStamp.Load())
			decay := 1.0
			if elapsed > 0 {
				decay = math.Exp(-elapsed / tau)
			}
			next = prev*decay + rtt*(1-decay)
		}
		if e.rttBits.CompareAndSwap(old, math.Float64bits(next)) {
			e.rttStamp.Store(now)
			return
		}
	}
}
