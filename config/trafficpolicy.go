package config

import "os"

// Validation and defaults of the balancer's traffic policies on a
// cluster: slow_start, locality and outlier.failure_percentage. The
// balancer implements them (balancer/slowstart.go, balancer/locality.go,
// balancer/outlier.go); server/clusters.go translates them.

// trafficPolicies validates cluster cl at path p.
func (v *validator) trafficPolicies(p string, cl *Cluster) {
	if l := cl.Locality; l != nil {
		if m := l.MinHealthyPercent; m != nil && (*m < 0 || *m > 100) {
			v.add(p+".locality.min_healthy_percent", "must be a percentage between 0 and 100, got %d", *m)
		}
	}
	if fp := cl.Outlier.FailurePercentage; fp != nil {
		fpp := p + ".outlier.failure_percentage"
		if fp.Threshold < 0 || fp.Threshold > 100 {
			v.add(fpp+".threshold", "must be a percentage between 1 and 100, got %d", fp.Threshold)
		}
		if fp.MinimumRequests < 0 {
			v.add(fpp+".minimum_requests", "must not be negative, got %d", fp.MinimumRequests)
		}
		if i := fp.Interval.D(); i != 0 && i < MinFailurePercentInterval {
			v.add(fpp+".interval", "must be at least %v, got %v", MinFailurePercentInterval, i)
		}
	}
}

// applyTrafficPolicyDefaults fills in the defaults of cl's traffic
// policies. The local zone falls back to MESHD_ZONE here, so /config_dump
// shows the zone in effect.
func (cl *Cluster) applyTrafficPolicyDefaults() {
	if l := cl.Locality; l != nil {
		if l.ZoneKey == "" {
			l.ZoneKey = "zone"
		}
		if l.LocalZone == "" {
			l.LocalZone = os.Getenv(ZoneEnv)
		}
		if l.MinHealthyPercent == nil {
			m := DefaultMinHealthyPercent
			l.MinHealthyPercent = &m
		}
	}
	if fp := cl.Outlier.FailurePercentage; fp != nil {
		if fp.Threshold == 0 {
			fp.Threshold = DefaultFailurePercentThreshold
		}
		if fp.MinimumRequests == 0 {
			fp.MinimumRequests = DefaultFailurePercentRequests
		}
		if fp.Interval == 0 {
			fp.Interval = Duration(DefaultFailurePercentInterval)
		}
	}
}

// ZoneEnv is the environment variable locality.local_zone falls back to.
const ZoneEnv = "MESHD_ZONE"
