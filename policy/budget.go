package policy

import (
	"sync"
	"time"
)

// budgetWindow is how far back a RetryBudget looks, in one-second buckets.
const budgetWindow = 10

// RetryBudget caps one cluster's retries (Finagle's and Linkerd's retry
// budgets): a retry is allowed while the retries of the last 10 seconds stay
// under percent of the calls of the same 10 seconds, or while fewer than
// minPerSecond retries happened in the current second. So retries add at
// most percent extra load to a failing cluster, plus a small floor that
// lets a quiet cluster retry at all, however many attempts routes allow.
//
// Deposit and Withdraw take a mutex: both are a few additions, far cheaper
// than the call they account for. WithParams shares the counters across a
// reload that changes only the budget.
type RetryBudget struct {
	percent      float64
	minPerSecond float64
	w            *budgetCounts
}

type budgetCounts struct {
	now     func() time.Time
	mu      sync.Mutex
	buckets [budgetWindow]budgetBucket
	denied  uint64
}

// budgetBucket counts one second's calls and retries.
type budgetBucket struct {
	sec            int64
	calls, retries int64
}

// NewRetryBudget returns a budget; now is the clock (nil: time.Now).
func NewRetryBudget(percent, minPerSecond float64, now func() time.Time) *RetryBudget {
	if now == nil {
		now = time.Now
	}
	return &RetryBudget{percent: percent, minPerSecond: minPerSecond, w: &budgetCounts{now: now}}
}

// WithParams returns a budget with new parameters sharing b's counters.
func (b *RetryBudget) WithParams(percent, minPerSecond float64) *RetryBudget {
	return &RetryBudget{percent: percent, minPerSecond: minPerSecond, w: b.w}
}

// bucket returns the current second's bucket, reset if it held an older
// second. The caller holds mu.
func (w *budgetCounts) bucket(sec int64) *budgetBucket {
	bk := &w.buckets[sec%budgetWindow]
	if bk.sec != sec {
		*bk = budgetBucket{sec: sec}
	}
	return bk
}

// Deposit counts one call (not a retry) sent to the cluster.
func (b *RetryBudget) Deposit() {
	if b == nil {
		return
	}
	sec := b.w.now().Unix()
	b.w.mu.Lock()
	b.w.bucket(sec).calls++
	b.w.mu.Unlock()
}

// Withdraw reports whether one more retry is within the budget, and counts
// it if so.
func (b *RetryBudget) Withdraw() bool {
	if b == nil {
		return true
	}
	sec := b.w.now().Unix()
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	cur := b.w.bucket(sec)
	var calls, retries int64
	for i := range b.w.buckets {
		if bk := &b.w.buckets[i]; bk.sec > sec-budgetWindow && bk.sec <= sec {
			calls += bk.calls
			retries += bk.retries
		}
	}
	if float64(retries+1) <= float64(calls)*b.percent/100 || float64(cur.retries) < b.minPerSecond {
		cur.retries++
		return true
	}
	b.w.denied++
	return false
}

// RetryBudgetStats is a budget's view of the last 10 seconds.
type RetryBudgetStats struct {
	BudgetPercent       float64 `json:"budget_percent"`
	MinRetriesPerSecond float64 `json:"min_retries_per_second"`
	Calls               int64   `json:"calls_10s"`
	Retries             int64   `json:"retries_10s"`
	Denied              uint64  `json:"denied"`
}

// Stats returns the budget's parameters and counters.
func (b *RetryBudget) Stats() RetryBudgetStats {
	if b == nil {
		return RetryBudgetStats{}
	}
	sec := b.w.now().Unix()
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	s := RetryBudgetStats{BudgetPercent: b.percent, MinRetriesPerSecond: b.minPerSecond, Denied: b.w.denied}
	for i := range b.w.buckets {
		if bk := &b.w.buckets[i]; bk.sec > sec-budgetWindow && bk.sec <= sec {
			s.Calls += bk.calls
			s.Retries += bk.retries
		}
	}
	return s
}

// Same reports whether b was built with these parameters.
func (b *RetryBudget) Same(percent, minPerSecond float64) bool {
	return b != nil && b.percent == percent && b.minPerSecond == minPerSecond
}
