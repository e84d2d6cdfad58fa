package policy

import (
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
)

// MaxNotReachedAttempts bounds the attempts of a call that keep failing
// before they reach a backend (failed dial, no stream capacity, a stream
// refused before any request DATA went to it). Such a call is sent to
// another endpoint on every route, without a retry policy, a budget or a
// backoff, because it is always safe: no backend saw it.
const MaxNotReachedAttempts = 3

// Retry is a route's retry policy. A nil *Retry means no retries beyond
// the transparent reroutes of calls that never reached a backend.
type Retry struct {
	// Attempts is the total number of attempts that reach a backend,
	// including the first.
	Attempts int
	// RetryOn lists the statuses that are retried.
	RetryOn []codes.Code
	// PerTryTimeout bounds an attempt until it commits (0: none).
	PerTryTimeout time.Duration
	// BackoffBase and BackoffMax shape the jittered exponential backoff.
	BackoffBase, BackoffMax time.Duration
	// MaxBufferBytes is how many request bytes one call may hold for replay.
	MaxBufferBytes int64
}

// Backoff is the wait before retry n (1-based): uniform in
// [0, min(max, base·2^(n-1))), "full jitter", so that calls that failed
// together do not retry together.
func (r *Retry) Backoff(n int) time.Duration {
	d := r.BackoffMax
	if n <= 30 {
		if b := r.BackoffBase << (n - 1); b > 0 && b < d {
			d = b
		}
	}
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d)))
}

// Failure is a failed attempt of a call that has not committed (no
// response header or message reached the client), as the retry decision
// sees it.
type Failure struct {
	// NotReached: the request never reached the backend.
	NotReached bool
	// Code is the attempt's status.
	Code codes.Code
	// PerTry: the route's per-try timeout ended the attempt.
	PerTry bool
	// Took is how long the attempt lasted.
	Took time.Duration
	// Reached counts the call's failed attempts that reached a backend,
	// this one included; Rerouted its attempts so far that did not and
	// were sent elsewhere.
	Reached, Rerouted int
	// Left is the time to the call's deadline; HasDeadline false: none.
	Left        time.Duration
	HasDeadline bool
	// Wait is the backoff the next attempt would wait for (Retry.Backoff).
	Wait time.Duration
}

// Verdict is what becomes of a failed attempt.
type Verdict uint8

const (
	// Stop: the attempt's outcome is the call's.
	Stop Verdict = iota
	// Reroute: send the call to another endpoint at once, without the
	// retry budget (the attempt never reached a backend).
	Reroute
	// RetryAfterWait: a retry after Failure.Wait, if the cluster's retry
	// budget allows one (asked last, so that a retry refused for another
	// reason costs no budget).
	RetryAfterWait
)

// Decide is meshd's one retry decision, for every route (r nil: no retry
// policy). A call that never reached a backend is rerouted up to
// MaxNotReachedAttempts attempts in a row. Otherwise it is retried up to
// the policy's attempts, on a retry_on status or a per-try timeout, and
// only when the time left covers the backoff plus what the next attempt
// needs: the failed attempt is the estimate, or the per-try timeout if
// that is what ended it. Never start an attempt that cannot finish inside
// the deadline.
func Decide(r *Retry, f Failure) Verdict {
	if f.NotReached {
		if f.Rerouted >= MaxNotReachedAttempts-1 {
			return Stop
		}
		return Reroute
	}
	if r == nil || f.Reached >= r.Attempts {
		return Stop
	}
	if !f.PerTry && !slices.Contains(r.RetryOn, f.Code) {
		return Stop
	}
	if f.HasDeadline {
		need := f.Took
		if f.PerTry {
			need = r.PerTryTimeout
		}
		if f.Left-f.Wait < need {
			return Stop
		}
	}
	return RetryAfterWait
}
