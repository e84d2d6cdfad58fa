package policy

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the rate and budget types.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                   string
		maxRequests, acquire   int
		wantAdmitted, rejected int
	}{
		{"unlimited", 0, 50, 50, 0},
		{"at the limit", 3, 3, 3, 0},
		{"over the limit", 3, 5, 3, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := NewLimiter(tc.maxRequests, 0)
			admitted := 0
			for range tc.acquire {
				if l.Acquire() {
					admitted++
				}
			}
			st := l.Stats()
			if admitted != tc.wantAdmitted || st.Active != int64(admitted) || st.RejectedRequests != uint64(tc.rejected) {
				t.Fatalf("admitted %d (want %d), stats %+v", admitted, tc.wantAdmitted, st)
			}
			for range admitted {
				l.Release()
			}
			if l.Stats().Active != 0 {
				t.Fatalf("active after release = %d", l.Stats().Active)
			}
		})
	}
}

func TestLimiterPendingAndSharedCounters(t *testing.T) {
	t.Parallel()
	l := NewLimiter(2, 1)
	if !l.AcquirePending() || l.AcquirePending() {
		t.Fatal("max_pending 1 must admit one waiter and refuse the second")
	}
	l.ReleasePending()
	if !l.Acquire() || !l.Acquire() {
		t.Fatal("max_requests 2 must admit two calls")
	}
	// A reload raising the limit shares the counters: the two calls in
	// flight still count.
	l2 := l.WithLimits("c", 3, 1)
	if !l2.Acquire() || l2.Acquire() {
		t.Fatalf("after WithLimits(3): stats %+v", l2.Stats())
	}
	if got := l.Stats().Active; got != 3 {
		t.Fatalf("old view sees %d active, want 3 (shared counters)", got)
	}
	var nilL *Limiter
	if !nilL.Acquire() || !nilL.AcquirePending() {
		t.Fatal("a nil Limiter must admit everything")
	}
	nilL.Release()
	nilL.ReleasePending()
}

func TestLimiterConcurrent(t *testing.T) {
	t.Parallel()
	l := NewLimiter(10, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	maxSeen := int64(0)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if l.Acquire() {
					if a := l.Stats().Active; a > 10 {
						mu.Lock()
						maxSeen = max(maxSeen, a)
						mu.Unlock()
					}
					l.Release()
				}
			}
		}()
	}
	wg.Wait()
	if maxSeen > 0 || l.Stats().Active != 0 {
		t.Fatalf("saw %d active (limit 10), %d left", maxSeen, l.Stats().Active)
	}
}

func TestTokenBucket(t *testing.T) {
	t.Parallel()
	clk := newClock()
	b := NewTokenBucket(2, 3, clk.now) // 2/s, burst 3
	for i := range 3 {
		if !b.Allow() {
			t.Fatalf("burst call %d refused", i)
		}
	}
	if b.Allow() {
		t.Fatal("fourth call admitted with an empty bucket")
	}
	clk.add(499 * time.Millisecond)
	if b.Allow() {
		t.Fatal("admitted before a token refilled (2/s needs 500ms)")
	}
	clk.add(time.Millisecond)
	if !b.Allow() {
		t.Fatal("refused after 500ms at 2/s")
	}
	clk.add(time.Hour)
	n := 0
	for b.Allow() {
		n++
	}
	if n != 3 {
		t.Fatalf("after an hour the bucket held %d tokens, want the burst 3", n)
	}
	if !b.Same(2, 3) || b.Same(2, 4) || b.Same(1, 3) {
		t.Fatal("Same does not compare the parameters")
	}
}

func TestByteBudget(t *testing.T) {
	t.Parallel()
	b := NewByteBudget(100)
	if !b.TryAcquire(60) || b.TryAcquire(41) || !b.TryAcquire(40) {
		t.Fatalf("limit 100 not enforced: in use %d", b.InUse())
	}
	b2 := b.WithLimit(200) // a reload raising the limit shares usage
	if b2.InUse() != 100 || !b2.TryAcquire(100) || b2.TryAcquire(1) {
		t.Fatalf("shared usage wrong: %d", b2.InUse())
	}
	b.Release(100)
	b2.Release(100)
	if b.InUse() != 0 {
		t.Fatalf("in use %d after release", b.InUse())
	}
	if !NewByteBudget(0).TryAcquire(1 << 40) {
		t.Fatal("limit 0 means none")
	}
}
