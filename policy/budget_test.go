package policy

import (
	"testing"
	"time"
)

func TestRetryBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		percent, min float64
		calls        int // calls in one second, each wanting a retry
		wantRetries  int
	}{
		// 20% of 100 calls: 20 retries (the floor of 0 adds none).
		{"percent only", 20, 0, 100, 20},
		// The floor lets a quiet cluster retry: 3 calls, 20% would allow 0.
		{"floor", 20, 10, 3, 3},
		// Percent and floor together: retries stop at whichever is larger
		// at each step; with 100 calls that is 20 by percent, and the floor
		// of 10/s is already used up by then.
		{"percent and floor", 20, 10, 100, 20},
		{"no budget", 0, 0, 100, 0},
		{"everything", 100, 0, 50, 50},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			b := NewRetryBudget(tc.percent, tc.min, clk.now)
			got := 0
			for range tc.calls {
				b.Deposit()
			}
			for range tc.calls {
				if b.Withdraw() {
					got++
				}
			}
			if got != tc.wantRetries {
				t.Fatalf("%d retries allowed, want %d (stats %+v)", got, tc.wantRetries, b.Stats())
			}
			if st := b.Stats(); st.Retries != int64(got) || st.Calls != int64(tc.calls) || st.Denied != uint64(tc.calls-got) {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestRetryBudgetWindowAndFloor(t *testing.T) {
	t.Parallel()
	clk := newClock()
	b := NewRetryBudget(0, 2, clk.now) // only the floor: 2 retries per second
	for sec := range 5 {
		n := 0
		for b.Withdraw() {
			n++
			if n > 10 {
				t.Fatal("the floor does not stop")
			}
		}
		if n != 2 {
			t.Fatalf("second %d: %d retries, want the floor of 2", sec, n)
		}
		clk.add(time.Second)
	}
	// Calls age out of the 10 s window.
	b = NewRetryBudget(50, 0, clk.now)
	for range 10 {
		b.Deposit()
	}
	clk.add(10 * time.Second)
	if b.Withdraw() {
		t.Fatal("a retry was allowed on calls older than the window")
	}
	b.Deposit()
	b.Deposit()
	if !b.Withdraw() || b.Withdraw() {
		t.Fatal("50% of 2 fresh calls must allow exactly one retry")
	}
	// WithParams keeps the counters.
	if st := b.WithParams(100, 0).Stats(); st.Calls != 2 || st.Retries != 1 {
		t.Fatalf("WithParams lost the counters: %+v", st)
	}
}
