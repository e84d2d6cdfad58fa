package balancer

import "time"

// Slow start, after Envoy's slow_start_config with aggression 1.0: an
// endpoint that starts serving (its first SERVING verdict, or its return
// from a health or outlier ejection) takes a share of the calls that
// grows linearly with the time since, from SlowStartMinPercent of its
// weight to all of it over Options.SlowStart:
//
//	effective = weight × max(SlowStartMinPercent, 100 × elapsed / window) / 100
//
// Envoy also floors the elapsed time at one second; meshd does not,
// because a window of a few seconds is a reasonable setting here and the
// floor would start it half way up.
//
// The weights are computed on the update loop, never per pick: while some
// endpoint ramps, the loop rebuilds the picker every slowStartStep of the
// window (at least slowStartMinStep apart), so Pick stays an atomic or two
// with no clock read, and the ramp is a staircase of about 50 steps. The
// rebuild after the last window ends restores the plain weights and
// schedules nothing more; with SlowStart 0 none of this runs.
//
// round_robin, least_request and peak_ewma use the ramped weights;
// ring_hash does not (as in Envoy): scaling an endpoint's virtual nodes
// would move keys back and forth during the window, which is what a hash
// ring exists to avoid. In panic mode endpoints that are not serving are
// picked at their full weight; the ramp is for endpoints that came back.

// SlowStartMinPercent is the share of its weight an endpoint starts its
// slow start with (Envoy's min_weight_percent default).
const SlowStartMinPercent = 10

const (
	// slowStartSteps is how many weight steps a window is cut into.
	slowStartSteps = 50
	// slowStartMinStep bounds the rebuild rate of short windows.
	slowStartMinStep = 50 * time.Millisecond
	// slowStartScale is the fixed-point scale of ramped weights: weights
	// are whole numbers, so a ramping endpoint's percent is kept by
	// scaling every weight of the picker by 100 while any ramps.
	slowStartScale = 100
)

// slowStartPercent is the percent of its weight an endpoint that started
// serving at since gets at now, for a window (> 0): 100 once the window is
// over.
func slowStartPercent(since, now time.Time, window time.Duration) uint64 {
	elapsed := now.Sub(since)
	if elapsed >= window {
		return 100
	}
	p := uint64(max(elapsed, 0) * 100 / window)
	return max(p, SlowStartMinPercent)
}

// slowStartUntil is when e's ramp ends, or zero when it does not ramp now.
// Called with c.mu held.
func (c *Cluster) slowStartUntil(e *Endpoint, now time.Time) time.Time {
	if !c.slowStartOn || !e.wasServing || e.servingSince.IsZero() {
		return time.Time{}
	}
	if end := e.servingSince.Add(c.opts.SlowStart); now.Before(end) {
		return end
	}
	return time.Time{}
}

// applySlowStart notes which endpoints started serving since the last
// rebuild and sets the build weights of eps, the endpoints the next picker
// holds. It returns when the next ramp step is due (zero: none ramps).
// Called on the loop with c.mu held, before the picker is built.
func (c *Cluster) applySlowStart(eps []*Endpoint, now time.Time) (next time.Time) {
	for _, e := range c.order {
		serving := e.pickable()
		if serving && !e.wasServing {
			e.servingSince = now
		}
		e.wasServing = serving
		e.buildWeight = 0
	}
	if !c.slowStartOn {
		return time.Time{}
	}
	ramping := false
	for _, e := range eps {
		if !c.slowStartUntil(e, now).IsZero() {
			ramping = true
			break
		}
	}
	if !ramping {
		return time.Time{}
	}
	step := max(c.opts.SlowStart/slowStartSteps, slowStartMinStep)
	for _, e := range eps {
		w := uint64(weightOf(e))
		end := c.slowStartUntil(e, now)
		if end.IsZero() {
			e.buildWeight = w * slowStartScale
			continue
		}
		e.buildWeight = max(w*slowStartPercent(e.servingSince, now, c.opts.SlowStart)*slowStartScale/100, 1)
		t := now.Add(step)
		if end.Before(t) {
			t = end
		}
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next
}

// effectiveWeight is the weight e's calls are balanced by now, for status.
// Called with c.mu held.
func (c *Cluster) effectiveWeight(e *Endpoint, now time.Time) float64 {
	w := float64(weightOf(e))
	if c.slowStartUntil(e, now).IsZero() {
		return w
	}
	return w * float64(slowStartPercent(e.servingSince, now, c.opts.SlowStart)) / 100
}
