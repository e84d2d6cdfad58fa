package policy

import "time"

// Route is one route's policy: its timeouts, rate limit and retry policy,
// with the statuses each of them produces, built once. It is immutable
// (the rate limit's bucket is shared state, safe for concurrent use) and
// reached from the matched route (router.Route.Policy), never looked up by
// name per call. A nil *Route is a route with no policy (meshd's synthetic
// routes): no timeout, no rate limit, transparent reroutes only.
type Route struct {
	// Name is the route's name, for the statuses.
	Name string
	// Timeout is the call's total budget at meshd (0: none).
	Timeout time.Duration
	// MaxGRPCTimeout caps a client-supplied deadline (0: no cap).
	MaxGRPCTimeout time.Duration
	// IdleTimeout ends a call after this long without a message in either
	// direction (0: none).
	IdleTimeout time.Duration
	// RateLimit admits calls to the route (nil: no limit).
	RateLimit *TokenBucket
	// Retry is the retry policy (nil: transparent reroutes only).
	Retry *Retry
	// Fault is the route's fault injection (nil: none).
	Fault *Fault
	// Mirror is the route's mirroring (nil: none).
	Mirror *Mirror
	// Hedge is the route's hedging (nil: none); Retry is then set too.
	Hedge *Hedge

	timeoutErr, maxGRPCErr, idleErr, perTryErr, rateErr error
}

// Init builds the route's statuses; call it once, before the route is
// used. It returns r.
func (r *Route) Init() *Route {
	if r.Timeout > 0 {
		r.timeoutErr = timeoutStatus(settingTimeout, r.Timeout)
	}
	if r.MaxGRPCTimeout > 0 {
		r.maxGRPCErr = timeoutStatus(settingMaxGRPC, r.MaxGRPCTimeout)
	}
	if r.IdleTimeout > 0 {
		r.idleErr = timeoutStatus(settingIdle, r.IdleTimeout)
	}
	if r.Retry != nil && r.Retry.PerTryTimeout > 0 {
		r.perTryErr = timeoutStatus(settingPerTry, r.Retry.PerTryTimeout)
	}
	if r.RateLimit != nil {
		r.rateErr = errRateLimited(r.Name, r.RateLimit.Rate())
	}
	if r.Fault != nil {
		r.Fault.init(r.Name)
	}
	return r
}

// Admit is the one admission decision for a call on route r to a cluster
// limited by lim: the route's rate limit, then the cluster's max_requests.
// nil admits the call, which must then Release lim once it ends; an error
// is the status to answer with, and nothing is held.
func Admit(r *Route, lim *Limiter) error {
	if r != nil && !r.RateLimit.Allow() {
		return r.rateErr
	}
	if !lim.Acquire() {
		return lim.requestsErr
	}
	return nil
}

// Budget is the route's time budget for a call whose client deadline is
// deadline (zero: none), and the status a call gets when meshd's timer for
// that budget fires: the route timeout, or max_grpc_timeout when the
// client's deadline is later than that cap. The engine then takes the
// tighter of the budget and the client's deadline. d 0: no budget.
func (r *Route) Budget(deadline, now time.Time) (d time.Duration, err error) {
	if r == nil {
		return 0, nil
	}
	d, err = r.Timeout, r.timeoutErr
	if r.MaxGRPCTimeout > 0 && !deadline.IsZero() && deadline.Sub(now) > r.MaxGRPCTimeout {
		// An equal route timeout keeps its name: it is the setting the
		// operator wrote for this route.
		if d == 0 || r.MaxGRPCTimeout < d {
			d, err = r.MaxGRPCTimeout, r.maxGRPCErr
		}
	}
	return d, err
}

// IdleErr is the status of a call idle_timeout ended (nil: no idle timeout).
func (r *Route) IdleErr() error { return r.idleErr }

// PerTryErr is the status of a call per_try_timeout ended (nil: none).
func (r *Route) PerTryErr() error { return r.perTryErr }
