package policy

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestDecide is the retry decision's table: transparent reroutes, the
// policy's attempts and codes, per-try timeouts and the deadline check.
func TestDecide(t *testing.T) {
	t.Parallel()
	r := &Retry{Attempts: 3, RetryOn: []codes.Code{codes.Unavailable}, PerTryTimeout: 100 * time.Millisecond}
	unavailable := func(reached int) Failure {
		return Failure{Code: codes.Unavailable, Reached: reached, Took: 10 * time.Millisecond}
	}
	withLeft := func(f Failure, left, wait time.Duration) Failure {
		f.HasDeadline, f.Left, f.Wait = true, left, wait
		return f
	}
	perTry := Failure{Code: codes.DeadlineExceeded, PerTry: true, Reached: 1, Took: 100 * time.Millisecond}
	for _, tc := range []struct {
		name string
		r    *Retry
		f    Failure
		want Verdict
	}{
		{"not reached, no policy: reroute", nil, Failure{NotReached: true, Code: codes.Unavailable}, Reroute},
		{"not reached, second reroute", nil, Failure{NotReached: true, Rerouted: 1}, Reroute},
		{"not reached, reroutes spent", nil, Failure{NotReached: true, Rerouted: MaxNotReachedAttempts - 1}, Stop},
		{"not reached with a policy: still a reroute, no budget", r, Failure{NotReached: true, Reached: 5}, Reroute},
		{"reached, no policy", nil, unavailable(1), Stop},
		{"retry_on code", r, unavailable(1), RetryAfterWait},
		{"second retry", r, unavailable(2), RetryAfterWait},
		{"attempts spent", r, unavailable(3), Stop},
		{"code not in retry_on", r, Failure{Code: codes.Internal, Reached: 1}, Stop},
		{"OK is never retried", r, Failure{Code: codes.OK, Reached: 1}, Stop},
		{"per-try timeout is retried whatever its code", r, perTry, RetryAfterWait},
		{"deadline leaves room", r, withLeft(unavailable(1), time.Second, 50*time.Millisecond), RetryAfterWait},
		{"deadline: backoff plus the last attempt's time do not fit", r, withLeft(unavailable(1), 55*time.Millisecond, 50*time.Millisecond), Stop},
		{"deadline: per-try timeout is the estimate", r, withLeft(perTry, 150*time.Millisecond, 60*time.Millisecond), Stop},
		{"deadline: per-try fits", r, withLeft(perTry, 170*time.Millisecond, 60*time.Millisecond), RetryAfterWait},
		{"deadline already passed", r, withLeft(unavailable(1), -time.Millisecond, 0), Stop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Decide(tc.r, tc.f); got != tc.want {
				t.Fatalf("Decide = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	r := &Retry{BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond}
	for n, ceil := range map[int]time.Duration{1: 25 * time.Millisecond, 2: 50 * time.Millisecond, 4: 200 * time.Millisecond, 5: 250 * time.Millisecond, 40: 250 * time.Millisecond} {
		for range 200 {
			if d := r.Backoff(n); d < 0 || d >= ceil {
				t.Fatalf("Backoff(%d) = %s, want in [0, %s)", n, d, ceil)
			}
		}
	}
	if d := (&Retry{}).Backoff(1); d != 0 {
		t.Fatalf("zero policy backoff = %s, want 0", d)
	}
}
