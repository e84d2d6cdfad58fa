package config

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Resilience defaults: timeouts have none (a default total or idle timeout
// would cut long-lived streams), retries and limits have these.
const (
	// DefaultRetryMaxBufferBytes is retry.max_buffer_bytes when unset.
	DefaultRetryMaxBufferBytes = 256 << 10
	// DefaultMaxRetryBufferBytes is max_retry_buffer_bytes when unset.
	DefaultMaxRetryBufferBytes = 64 << 20
	// DefaultBackoffBase and DefaultBackoffMax are retry.backoff's defaults.
	DefaultBackoffBase = 25 * time.Millisecond
	DefaultBackoffMax  = 250 * time.Millisecond
	// DefaultBudgetPercent and DefaultMinRetriesPerSecond are
	// retry_budget's defaults.
	DefaultBudgetPercent       = 20.0
	DefaultMinRetriesPerSecond = 10.0
)

// RateLimit is a route's token bucket.
type RateLimit struct {
	// RequestsPerSecond is the sustained rate (> 0; fractions allowed:
	// 0.5 is one call every two seconds).
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	// Burst is how many calls may arrive at once after a quiet spell.
	// Default: RequestsPerSecond rounded up, at least 1.
	Burst int `yaml:"burst"`
}

// RetryBackoff is the wait before retry n: a random time in
// [0, min(MaxInterval, BaseInterval·2^(n-1))) ("full jitter"), so that
// clients that failed together do not retry together.
type RetryBackoff struct {
	// BaseInterval is the first retry's upper bound. Default 25ms.
	BaseInterval Duration `yaml:"base_interval"`
	// MaxInterval caps the bound. Default 250ms, and at least BaseInterval.
	MaxInterval Duration `yaml:"max_interval"`
}

// RetryBudget caps a cluster's retries, like Finagle's and Linkerd's retry
// budgets: a retry is allowed while the retries of the last 10 seconds stay
// under BudgetPercent of the calls of the same 10 seconds, or while fewer
// than MinRetriesPerSecond retries happened in the current second. Under a
// 100%-failing cluster retries thus add at most BudgetPercent extra load
// (plus the small floor) instead of multiplying it by retry.attempts.
// Transparent retries of calls that never reached a backend are not
// counted: they add no backend load.
type RetryBudget struct {
	// BudgetPercent is the share of calls that may be retried. Default 20;
	// 0 leaves only the floor.
	BudgetPercent *float64 `yaml:"budget_percent"`
	// MinRetriesPerSecond is the floor that lets a low-traffic cluster
	// retry at all. Default 10; 0 disables the floor.
	MinRetriesPerSecond *float64 `yaml:"min_retries_per_second"`
}

// resilience checks the top-level, per-route and per-cluster resilience keys.
func (v *validator) resilience() {
	if v.c.MaxRetryBufferBytes < 0 {
		v.add("max_retry_buffer_bytes", "must not be negative, got %d", v.c.MaxRetryBufferBytes)
	}
	if k := v.c.Consul.ConfigKey; k != "" {
		if strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") || strings.ContainsAny(k, " \t\n") {
			v.add("consul.config_key", "invalid KV key %q: no leading or trailing slash, no spaces", k)
		}
	}
	for i := range v.c.Routes {
		v.routeResilience(fmt.Sprintf("routes[%d]", i), &v.c.Routes[i])
	}
	v.routesTraffic() // traffic.go
	for i := range v.c.Clusters {
		v.clusterResilience(fmt.Sprintf("clusters[%d]", i), &v.c.Clusters[i])
	}
}

func (v *validator) routeResilience(p string, r *Route) {
	if rl := r.RateLimit; rl != nil {
		if !(rl.RequestsPerSecond > 0) || math.IsInf(rl.RequestsPerSecond, 0) {
			v.add(p+".rate_limit.requests_per_second", "must be a positive number, got %v", rl.RequestsPerSecond)
		}
		if rl.Burst < 0 {
			v.add(p+".rate_limit.burst", "must not be negative, got %d", rl.Burst)
		}
	}
	rt := r.Retry
	if rt == nil {
		return
	}
	if rt.MaxBufferBytes < 0 {
		v.add(p+".retry.max_buffer_bytes", "must not be negative, got %d", rt.MaxBufferBytes)
	}
	b := rt.Backoff
	if b.BaseInterval > 0 && b.MaxInterval > 0 && b.MaxInterval < b.BaseInterval {
		v.add(p+".retry.backoff.max_interval", "%s is shorter than base_interval %s", b.MaxInterval.D(), b.BaseInterval.D())
	}
}

func (v *validator) clusterResilience(p string, c *Cluster) {
	if c.MaxRequests < 0 {
		v.add(p+".max_requests", "must not be negative, got %d", c.MaxRequests)
	}
	if c.MaxPending < 0 {
		v.add(p+".max_pending", "must not be negative, got %d", c.MaxPending)
	}
	if b := c.RetryBudget.BudgetPercent; b != nil && (!(*b >= 0) || math.IsInf(*b, 0)) {
		v.add(p+".retry_budget.budget_percent", "must not be negative, got %v", *b)
	}
	if m := c.RetryBudget.MinRetriesPerSecond; m != nil && (!(*m >= 0) || math.IsInf(*m, 0)) {
		v.add(p+".retry_budget.min_retries_per_second", "must not be negative, got %v", *m)
	}
}

// applyResilienceDefaults fills in the resilience defaults documented on
// the fields. It runs after Validate, from applyDefaults.
func (c *Config) applyResilienceDefaults() {
	if c.MaxRetryBufferBytes == 0 {
		c.MaxRetryBufferBytes = DefaultMaxRetryBufferBytes
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if rl := r.RateLimit; rl != nil && rl.Burst == 0 {
			rl.Burst = max(1, int(math.Ceil(rl.RequestsPerSecond)))
		}
		if rt := r.Retry; rt != nil {
			if rt.MaxBufferBytes == 0 {
				rt.MaxBufferBytes = DefaultRetryMaxBufferBytes
			}
			if rt.Backoff.BaseInterval == 0 {
				rt.Backoff.BaseInterval = Duration(DefaultBackoffBase)
			}
			if rt.Backoff.MaxInterval == 0 {
				rt.Backoff.MaxInterval = Duration(max(DefaultBackoffMax, rt.Backoff.BaseInterval.D()))
			}
		}
	}
	for i := range c.Clusters {
		b := &c.Clusters[i].RetryBudget
		if b.BudgetPercent == nil {
			p := DefaultBudgetPercent
			b.BudgetPercent = &p
		}
		if b.MinRetriesPerSecond == nil {
			m := DefaultMinRetriesPerSecond
			b.MinRetriesPerSecond = &m
		}
	}
}
