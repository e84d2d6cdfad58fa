package balancer

import (
	"fmt"
	"time"
)

// Outlier detection, run on the update loop. Done only counts (atomics)
// and flags; the decisions below are serialized with every other state
// change, so the ejection cap is never exceeded by racing ejections.

// expireEjections returns endpoints whose ejection time is over and says
// whether any did.
func (c *Cluster) expireEjections(now time.Time) bool {
	dirty := false
	for _, e := range c.order {
		if e.ejectedUntil.IsZero() || now.Before(e.ejectedUntil) {
			continue
		}
		e.ejectedUntil = time.Time{}
		e.unejectedAt = now
		// Failures of calls that were in flight when it was ejected say
		// nothing about it now.
		e.consecutive.Store(0)
		e.outlierFlag.Store(false)
		c.transition(e, now)
		dirty = true
	}
	return dirty
}

// judgeOutliers applies the consecutive-failure rule to endpoints flagged
// by Done and, on an interval tick, the failure-percentage rule to all. It
// says whether any endpoint was ejected.
func (c *Cluster) judgeOutliers(now time.Time, ticked bool) bool {
	if !c.outlierOn {
		return false
	}
	dirty := false
	if c.consecLimit > 0 {
		for _, e := range c.order {
			// Clear before reading the counter: a failure after this point
			// flags (and wakes) again, so none is lost.
			if !e.outlierFlag.Swap(false) {
				continue
			}
			n := e.consecutive.Load()
			if n < c.consecLimit || !c.judgeable(e) {
				continue
			}
			if !c.canEject() {
				// Keep the flag, which also keeps Done from waking the loop
				// on every further failure; expireEjections frees room and
				// the same step judges this endpoint again.
				e.outlierFlag.Store(true)
				continue
			}
			c.eject(e, now, fmt.Sprintf("%d consecutive failures", n))
			dirty = true
		}
	}
	if ticked && c.percentRule {
		o := &c.opts.Outlier
		for _, e := range c.order {
			reqs, fails := e.requests.Swap(0), e.failures.Swap(0)
			if reqs < int64(o.FailureMinRequests) || fails*100 < int64(o.FailurePercentage)*reqs || !c.judgeable(e) {
				continue
			}
			if !c.canEject() {
				continue
			}
			c.eject(e, now, fmt.Sprintf("%d%% of %d calls failed in %v", fails*100/reqs, reqs, o.Interval))
			dirty = true
		}
	}
	return dirty
}

// judgeable says whether outlier detection may eject e: not while it is
// already ejected, or out of traffic because of its health (its failures
// are then those of calls sent before, and health already acted).
func (c *Cluster) judgeable(e *Endpoint) bool {
	return e.ejectedUntil.IsZero() && e.health != healthNotServing
}

// canEject says whether one more outlier ejection stays within
// MaxEjectionPercent of the live endpoints, rounded down.
func (c *Cluster) canEject() bool {
	ejected := 0
	for _, e := range c.order {
		if !e.ejectedUntil.IsZero() {
			ejected++
		}
	}
	return (ejected+1)*100 <= len(c.order)*c.opts.Outlier.MaxEjectionPercent
}

// eject takes e out of traffic for BaseEjectionTime × its multiplier,
// capped at MaxEjectionTime. The multiplier grows by one per ejection and
// first drops by one per Interval that e spent serving since it last
// returned, so an endpoint that flaps is kept out longer and longer while
// one that failed once, long ago, starts over (Envoy's behaviour, computed
// lazily instead of on a timer).
func (c *Cluster) eject(e *Endpoint, now time.Time, why string) {
	o := &c.opts.Outlier
	if e.multiplier > 0 && !e.unejectedAt.IsZero() {
		steps := now.Sub(e.unejectedAt) / o.Interval
		e.multiplier = max(0, e.multiplier-int(min(steps, time.Duration(e.multiplier))))
	}
	// Growing past the cap would only lengthen the decay.
	maxMult := int((o.MaxEjectionTime + o.BaseEjectionTime - 1) / o.BaseEjectionTime)
	e.multiplier = min(e.multiplier+1, maxMult)
	d := min(o.BaseEjectionTime*time.Duration(e.multiplier), o.MaxEjectionTime)
	e.ejectedUntil = now.Add(d)
	e.ejections++
	e.ejectReason = fmt.Sprintf("%s; ejected for %v", why, d)
	c.transition(e, now)
}
