package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// warmTimeout bounds how long a reload waits for its new clusters to warm
// up before switching to them anyway.
const warmTimeout = 5 * time.Second

// newState builds the data path's view of cfg: table is the route table
// (its routes carry the policies policies built). Clusters that a reload
// kept keep their call counters; only the limits of the new config apply
// to new calls.
func (s *Server) newState(cfg *config.Config, table *router.Table, runs map[string]*clusterRun) *director.State {
	st := &director.State{
		Table:       table,
		Clusters:    make(map[string]*balancer.Cluster, len(runs)),
		Limits:      make(map[string]*policy.Limiter, len(runs)),
		Budgets:     make(map[string]*policy.RetryBudget, len(runs)),
		RetryBuffer: s.retryBuf.WithLimit(cfg.MaxRetryBufferBytes),
		Upstreams:   make(map[string]*engine.Upstream, len(runs)),
	}
	for _, c := range cfg.Clusters {
		r := runs[c.Name]
		st.Clusters[c.Name] = r.cl
		st.Limits[c.Name] = r.limiter.WithLimits(c.Name, c.MaxRequests, c.MaxPending)
		st.Budgets[c.Name] = r.budget.WithParams(*c.RetryBudget.BudgetPercent, *c.RetryBudget.MinRetriesPerSecond)
		st.Upstreams[c.Name] = r.upstream
		if c.Authority != "" {
			if st.Authorities == nil {
				st.Authorities = map[string]string{}
			}
			st.Authorities[c.Name] = c.Authority
		}
	}
	return st
}

// policies returns the function that builds each route's policy value,
// and the route → rate-limit bucket index to keep once the config is in
// force. A route's bucket is kept when its rate limit did not change, so
// a reload does not hand every route a fresh burst.
func (s *Server) policies() (func(config.Route) *policy.Route, map[string]*policy.TokenBucket) {
	buckets := make(map[string]*policy.TokenBucket)
	return func(r config.Route) *policy.Route {
		pol := &policy.Route{Name: r.Name, Timeout: r.Timeout.D(), MaxGRPCTimeout: r.MaxGRPCTimeout.D(),
			IdleTimeout: r.IdleTimeout.D(), Retry: retryPolicy(r.Retry), Fault: faultPolicy(r.Fault)}
		if h := r.Hedge; h != nil {
			pol.Hedge = &policy.Hedge{Delay: h.Delay.D(), MaxAttempts: h.MaxAttempts}
			if pol.Retry == nil {
				pol.Retry = implicitRetry(h)
			}
		}
		if m := r.Mirror; m != nil && m.Percent > 0 {
			pol.Mirror = &policy.Mirror{Cluster: m.Cluster, Percent: m.Percent}
		}
		if rl := r.RateLimit; rl != nil {
			b := s.buckets[r.Name]
			if !b.Same(rl.RequestsPerSecond, rl.Burst) {
				b = policy.NewTokenBucket(rl.RequestsPerSecond, rl.Burst, nil)
			}
			pol.RateLimit = b
			buckets[r.Name] = b
		}
		return pol.Init()
	}, buckets
}

// faultPolicy translates a route's fault section.
func faultPolicy(f *config.Fault) *policy.Fault {
	if f == nil {
		return nil
	}
	pf := &policy.Fault{Header: f.Header}
	if d := f.Delay; d != nil {
		pf.Delay, pf.DelayPercent = d.Fixed.D(), d.Percent
	}
	if a := f.Abort; a != nil {
		pf.AbortCode, pf.AbortPercent = a.Code.C(), a.Percent
	}
	return pf
}

// retryPolicy translates a route's retry section (defaults applied).
func retryPolicy(r *config.Retry) *policy.Retry {
	if r == nil {
		return nil
	}
	on := make([]codes.Code, len(r.RetryOn))
	for i, c := range r.RetryOn {
		on[i] = c.C()
	}
	return &policy.Retry{
		Attempts:       r.Attempts,
		RetryOn:        on,
		PerTryTimeout:  r.PerTryTimeout.D(),
		BackoffBase:    r.Backoff.BaseInterval.D(),
		BackoffMax:     r.Backoff.MaxInterval.D(),
		MaxBufferBytes: r.MaxBufferBytes,
	}
}

// implicitRetry is the retry policy of a route with hedge and no retry
// (config.Hedge): attempts max_attempts, retry_on [UNAVAILABLE], the
// retry section's defaults otherwise.
func implicitRetry(h *config.Hedge) *policy.Retry {
	return &policy.Retry{
		Attempts:       h.MaxAttempts,
		RetryOn:        []codes.Code{codes.Unavailable},
		BackoffBase:    config.DefaultBackoffBase,
		BackoffMax:     config.DefaultBackoffMax,
		MaxBufferBytes: config.DefaultRetryMaxBufferBytes,
	}
}

// warm waits, up to warmTimeout, until every cluster of runs has its first
// discovery result and a first health verdict on each endpoint, so that
// neither the first calls after start nor those after a reload go to a
// cluster that cannot take them yet (Envoy's cluster warming). A cluster
// still cold at the timeout is used anyway and the reason logged: its
// calls fail as they would have without waiting. warm gives up early when
// ctx is done or the Server stops.
func (s *Server) warm(ctx context.Context, runs []*clusterRun) {
	if len(runs) == 0 {
		return
	}
	deadline := time.NewTimer(warmTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, r := range runs {
		for !warmed(r.cl) {
			select {
			case <-tick.C:
			case <-deadline.C:
				s.log.Warn("cluster not warm in time; using it anyway", "cluster", r.cfg.Name, "timeout", warmTimeout)
				return
			case <-ctx.Done():
				return
			case <-s.stopping:
				return
			}
		}
	}
}

// warmed reports whether cl has been discovered and every endpoint has a
// health verdict (serving or not).
func warmed(cl *balancer.Cluster) bool {
	if !cl.Ready() {
		return false
	}
	for _, e := range cl.Status().Endpoints {
		if e.State == balancer.StatePending {
			return false
		}
	}
	return true
}

// drained reports whether no call runs on any of states.
func drained(states []*director.State) bool {
	for _, st := range states {
		if st.Active() > 0 {
			return false
		}
	}
	return true
}

// holding returns the States among old that hold cl.
func holding(old []*director.State, cl *balancer.Cluster) []*director.State {
	var out []*director.State
	for _, st := range old {
		for _, c := range st.Clusters {
			if c == cl {
				out = append(out, st)
				break
			}
		}
	}
	return out
}

// pruneStates drops the States no call runs on: once swapped out, a
// drained State never gets a call again.
func pruneStates(old []*director.State) []*director.State {
	out := old[:0]
	for _, st := range old {
		if st.Active() > 0 {
			out = append(out, st)
		}
	}
	return out
}
