package policy

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// All the types in this file and budget.go are safe for concurrent use,
// and their methods accept a nil receiver meaning "no limit", so a call
// site needs no nil checks.

// Limiter is one cluster's concurrency limits: max_requests (calls in
// flight) and max_pending (calls waiting for an upstream stream). A call
// over a limit is refused at once; nothing queues in meshd.
//
// A reload that changes only the limits gets a new Limiter from WithLimits
// that shares the counters, so calls admitted under the old limits are
// still counted.
type Limiter struct {
	maxRequests int64 // 0: no limit
	maxPending  int64 // 0: no limit
	n           *limiterCounts
	// The statuses of the two limits, built once per Limiter (a reload
	// makes a new one) so that a refused call allocates nothing.
	requestsErr, pendingErr error
}

type limiterCounts struct {
	active, pending                   atomic.Int64
	rejectedRequests, rejectedPending atomic.Uint64
}

// NewLimiter returns a Limiter; 0 means no limit.
func NewLimiter(maxRequests, maxPending int) *Limiter {
	return (&Limiter{n: &limiterCounts{}}).WithLimits("", maxRequests, maxPending)
}

// WithLimits returns cluster's Limiter with new limits sharing l's
// counters.
func (l *Limiter) WithLimits(cluster string, maxRequests, maxPending int) *Limiter {
	return &Limiter{maxRequests: int64(maxRequests), maxPending: int64(maxPending), n: l.n,
		requestsErr: errMaxRequests(cluster, int64(maxRequests)), pendingErr: errMaxPending(cluster, int64(maxPending))}
}

// HasPendingLimit reports whether max_pending is set, so that calls to
// clusters without it carry nothing for it.
func (l *Limiter) HasPendingLimit() bool { return l != nil && l.maxPending > 0 }

// PendingErr is the status of a call refused by max_pending.
func (l *Limiter) PendingErr() error { return l.pendingErr }

// Acquire admits one call, or reports false when max_requests calls are
// already in flight. Every true must be paired with one Release.
func (l *Limiter) Acquire() bool {
	if l == nil {
		return true
	}
	if n := l.n.active.Add(1); l.maxRequests > 0 && n > l.maxRequests {
		l.n.active.Add(-1)
		l.n.rejectedRequests.Add(1)
		return false
	}
	return true
}

// Release ends a call admitted by Acquire.
func (l *Limiter) Release() {
	if l != nil {
		l.n.active.Add(-1)
	}
}

// AcquirePending admits one call into the wait for an upstream stream, or
// reports false when max_pending calls are already waiting. Every true
// must be paired with one ReleasePending.
func (l *Limiter) AcquirePending() bool {
	if l == nil {
		return true
	}
	if n := l.n.pending.Add(1); l.maxPending > 0 && n > l.maxPending {
		l.n.pending.Add(-1)
		l.n.rejectedPending.Add(1)
		return false
	}
	return true
}

// ReleasePending ends a wait admitted by AcquirePending.
func (l *Limiter) ReleasePending() {
	if l != nil {
		l.n.pending.Add(-1)
	}
}

// LimiterStats is a Limiter's counters, for the admin API and metrics.
type LimiterStats struct {
	MaxRequests      int64  `json:"max_requests"`
	MaxPending       int64  `json:"max_pending"`
	Active           int64  `json:"active"`
	Pending          int64  `json:"pending"`
	RejectedRequests uint64 `json:"rejected_requests"`
	RejectedPending  uint64 `json:"rejected_pending"`
}

// Stats returns the current counters (zero for a nil Limiter).
func (l *Limiter) Stats() LimiterStats {
	if l == nil {
		return LimiterStats{}
	}
	return LimiterStats{
		MaxRequests: l.maxRequests, MaxPending: l.maxPending,
		Active: l.n.active.Load(), Pending: l.n.pending.Load(),
		RejectedRequests: l.n.rejectedRequests.Load(), RejectedPending: l.n.rejectedPending.Load(),
	}
}

// TokenBucket is a route's rate limit: it refills at rate tokens per second
// up to burst, and each admitted call takes one token.
type TokenBucket struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// NewTokenBucket returns a full bucket. now is the clock (nil: time.Now).
func NewTokenBucket(perSecond float64, burst int, now func() time.Time) *TokenBucket {
	if now == nil {
		now = time.Now
	}
	b := float64(max(burst, 1))
	return &TokenBucket{rate: perSecond, burst: b, now: now, tokens: b, last: now()}
}

// Allow takes a token if one is left.
func (b *TokenBucket) Allow() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(b.burst, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Same reports whether b was built with these parameters, so a reload can
// keep a route's bucket (and its state) when its rate limit did not change.
func (b *TokenBucket) Same(perSecond float64, burst int) bool {
	return b != nil && b.rate == perSecond && b.burst == float64(max(burst, 1))
}

// Rate is the bucket's refill rate per second.
func (b *TokenBucket) Rate() float64 { return b.rate }

// ByteBudget is the process-wide cap on request bytes held for retries
// (max_retry_buffer_bytes). WithLimit shares the usage across reloads.
type ByteBudget struct {
	limit int64
	used  *atomic.Int64
}

// NewByteBudget returns a budget of limit bytes (0: no limit).
func NewByteBudget(limit int64) *ByteBudget {
	return &ByteBudget{limit: limit, used: new(atomic.Int64)}
}

// WithLimit returns a budget with a new limit sharing b's usage.
func (b *ByteBudget) WithLimit(limit int64) *ByteBudget {
	return &ByteBudget{limit: limit, used: b.used}
}

// TryAcquire takes n bytes, or reports false when that would pass the
// limit. Every true must be paired with a Release of the same n.
func (b *ByteBudget) TryAcquire(n int64) bool {
	if b == nil {
		return true
	}
	if u := b.used.Add(n); b.limit > 0 && u > b.limit {
		b.used.Add(-n)
		return false
	}
	return true
}

// Release returns n bytes.
func (b *ByteBudget) Release(n int64) {
	if b != nil && n != 0 {
		b.used.Add(-n)
	}
}

// InUse is the number of bytes held now.
func (b *ByteBudget) InUse() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}
