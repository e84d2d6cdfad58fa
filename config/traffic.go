package config

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
)

// Fault injects delays and errors into a share of a route's calls, for
// resilience drills (Envoy's and Istio's fault injection). Faults apply
// before the upstream pick: an aborted call never reaches a backend. At
// least one of Delay and Abort is required.
type Fault struct {
	// Delay holds a share of the calls back before their first attempt.
	// The delay counts against the call's deadline and the route's
	// timeout: a call whose deadline is shorter gets DEADLINE_EXCEEDED.
	Delay *FaultDelay `yaml:"delay"`
	// Abort answers a share of the calls at once with Code, in a status
	// whose message says the fault was injected by the route. An aborted
	// call is not delayed too.
	Abort *FaultAbort `yaml:"abort"`
	// Header, if set, limits the faults to calls that carry this metadata
	// key (lowercase; any value), so a drill touches only its own traffic.
	// Default "": every call of the route.
	Header string `yaml:"header"`
}

// FaultDelay is the delay half of a route's fault.
type FaultDelay struct {
	// Fixed is how long a delayed call waits (required, > 0).
	Fixed Duration `yaml:"fixed"`
	// Percent is the share of calls delayed, 0..100 (fractions allowed).
	Percent float64 `yaml:"percent"`
}

// FaultAbort is the abort half of a route's fault.
type FaultAbort struct {
	// Code is the status aborted calls get, by name (required; not OK).
	Code *Code `yaml:"code"`
	// Percent is the share of calls aborted, 0..100 (fractions allowed).
	Percent float64 `yaml:"percent"`
}

// Mirror sends a sampled copy of a route's calls to another cluster
// (shadow traffic): each sampled call's request, all shapes, a stream's
// messages as they come, goes to Cluster with "-shadow" appended to the
// :authority's host. The copy's response is discarded; it never delays,
// retries or fails the call, uses no retry budget, and is dropped
// (meshd_mirror_requests_total{result="dropped"}) when the mirror cannot
// keep up: more than 256 KiB of the request waiting for it, or no answer
// 1s after the call ended.
type Mirror struct {
	// Cluster receives the copies (required; a cluster of this config).
	Cluster string `yaml:"cluster"`
	// Percent is the share of the route's calls copied, 0..100 (fractions
	// allowed). Default 0: none.
	Percent float64 `yaml:"percent"`
}

// Hedge starts more attempts of a call that is slow to answer (gRFC A6's
// hedging): when an attempt has no response headers Delay after it
// started, another attempt goes to another endpoint, up to MaxAttempts in
// flight at once, the first included. The first attempt whose response
// commits (its first message, or its headers once the hold ends) wins;
// the others are reset with CANCEL. A status in retry_on from one attempt
// leaves the others carrying on; any other status (OK included) from any
// attempt ends the call with it, every other attempt cancelled.
//
// For idempotent methods only: a backend may see a call more than once.
//
// With retry: retry.attempts bounds every attempt of a call, hedged ones
// included (so max_attempts must not exceed it), retry.retry_on names the
// statuses that let other attempts carry on, and a retry follows only
// once no attempt is left; retry.per_try_timeout is not allowed (delay
// plays its part). Without retry: as retry {attempts: max_attempts,
// retry_on: [UNAVAILABLE]}. Either way each hedged attempt takes a retry
// from the cluster's retry_budget, no attempt starts past the deadline,
// and, as for retries, the request is kept for replay up to
// retry.max_buffer_bytes: a call whose request outgrows it is not hedged.
// A client-streaming call is hedged once its request has ended.
type Hedge struct {
	// Delay is how long an attempt waits for response headers before
	// another starts (required, positive).
	Delay Duration `yaml:"delay"`
	// MaxAttempts bounds the attempts in flight at once, the first
	// included: 2..5 (required).
	MaxAttempts int `yaml:"max_attempts"`
}

// MaxHedgeAttempts bounds hedge.max_attempts (gRFC A6 caps attempts at 5).
const MaxHedgeAttempts = 5

// routeTraffic checks a route's traffic policies (fault, mirror);
// clusters holds the config's cluster names.
func (v *validator) routeTraffic(p string, r *Route, clusters map[string]bool) {
	if h := r.Hedge; h != nil {
		if h.Delay <= 0 {
			v.add(p+".hedge.delay", "must be a positive duration, got %s", h.Delay.D())
		}
		if h.MaxAttempts < 2 || h.MaxAttempts > MaxHedgeAttempts {
			v.add(p+".hedge.max_attempts", "must be between 2 and %d, got %d", MaxHedgeAttempts, h.MaxAttempts)
		}
		if rt := r.Retry; rt != nil {
			if rt.Attempts < h.MaxAttempts {
				v.add(p+".hedge.max_attempts", "%d is more than retry.attempts %d, which bounds every attempt of a call, hedged ones included", h.MaxAttempts, rt.Attempts)
			}
			if rt.PerTryTimeout > 0 {
				v.add(p+".retry.per_try_timeout", "cannot be used with hedge (hedge.delay starts the next attempt)")
			}
		}
	}
	if m := r.Mirror; m != nil {
		switch {
		case m.Cluster == "":
			v.add(p+".mirror.cluster", "is required")
		case !clusters[m.Cluster]:
			v.add(p+".mirror.cluster", "unknown cluster %q", m.Cluster)
		}
		if !(m.Percent >= 0 && m.Percent <= 100) {
			v.add(p+".mirror.percent", "must be between 0 and 100, got %v", m.Percent)
		}
	}
	f := r.Fault
	if f == nil {
		return
	}
	p += ".fault"
	percent := func(path string, x float64) {
		if !(x >= 0 && x <= 100) {
			v.add(path, "must be between 0 and 100, got %v", x)
		}
	}
	if f.Delay == nil && f.Abort == nil {
		v.add(p, "needs delay, abort or both")
	}
	if d := f.Delay; d != nil {
		if d.Fixed <= 0 {
			v.add(p+".delay.fixed", "must be a positive duration, got %s", d.Fixed.D())
		}
		percent(p+".delay.percent", d.Percent)
	}
	if a := f.Abort; a != nil {
		switch {
		case a.Code == nil:
			v.add(p+".abort.code", "is required (a status name such as UNAVAILABLE)")
		case a.Code.C() == codes.OK:
			v.add(p+".abort.code", "OK is not a failure")
		}
		percent(p+".abort.percent", a.Percent)
	}
	if h := f.Header; h != "" && (h != strings.ToLower(h) || strings.HasPrefix(h, ":") || strings.ContainsAny(h, " \t\r\n")) {
		v.add(p+".header", "invalid metadata key %q: lowercase, no spaces, not a pseudo-header", h)
	}
}

// routesTraffic runs routeTraffic over every route.
func (v *validator) routesTraffic() {
	clusters := make(map[string]bool, len(v.c.Clusters))
	for _, c := range v.c.Clusters {
		clusters[c.Name] = true
	}
	for i := range v.c.Routes {
		v.routeTraffic(fmt.Sprintf("routes[%d]", i), &v.c.Routes[i], clusters)
	}
}
