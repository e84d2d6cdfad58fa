package policy

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBudget(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	in := func(d time.Duration) time.Time { return now.Add(d) }
	for _, tc := range []struct {
		name     string
		r        *Route
		deadline time.Time
		want     time.Duration
		msg      string // in the status; "" for no status
	}{
		{"no policy", nil, in(time.Second), 0, ""},
		{"no settings", &Route{}, in(time.Second), 0, ""},
		{"route timeout", &Route{Timeout: 2 * time.Second}, time.Time{}, 2 * time.Second, "route timeout 2s exceeded"},
		{"route timeout, earlier client deadline: still the route's", &Route{Timeout: 2 * time.Second}, in(time.Second), 2 * time.Second, "route timeout 2s"},
		{"cap: no client deadline is not capped", &Route{MaxGRPCTimeout: time.Second}, time.Time{}, 0, ""},
		{"cap: client deadline under it", &Route{MaxGRPCTimeout: time.Second}, in(500 * time.Millisecond), 0, ""},
		{"cap: client deadline over it", &Route{MaxGRPCTimeout: time.Second}, in(time.Minute), time.Second, "max_grpc_timeout 1s"},
		{"cap tighter than the route timeout", &Route{Timeout: 5 * time.Second, MaxGRPCTimeout: time.Second}, in(time.Minute), time.Second, "max_grpc_timeout"},
		{"route timeout tighter than the cap", &Route{Timeout: time.Second, MaxGRPCTimeout: 5 * time.Second}, in(time.Minute), time.Second, "route timeout"},
		{"equal: the route timeout names it", &Route{Timeout: time.Second, MaxGRPCTimeout: time.Second}, in(time.Minute), time.Second, "route timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.r
			if r != nil {
				r = r.Init()
			}
			d, err := r.Budget(tc.deadline, now)
			if d != tc.want {
				t.Fatalf("budget = %s, want %s", d, tc.want)
			}
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("status = %v, want none", err)
				}
				return
			}
			if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("status = %v, want DEADLINE_EXCEEDED naming %q", err, tc.msg)
			}
		})
	}
}

func TestAdmit(t *testing.T) {
	t.Parallel()
	clk := time.Unix(0, 0)
	bucket := NewTokenBucket(1, 1, func() time.Time { return clk })
	rl := (&Route{Name: "r", RateLimit: bucket}).Init()
	lim := NewLimiter(0, 0).WithLimits("c", 1, 0)

	if err := Admit(rl, lim); err != nil {
		t.Fatalf("first call refused: %v", err)
	}
	// The bucket is empty: refused by the route, and the cluster's count
	// is untouched.
	if err := Admit(rl, lim); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `route "r" is over its rate limit`) {
		t.Fatalf("over the rate limit: %v", err)
	}
	if got := lim.Stats().Active; got != 1 {
		t.Fatalf("active = %d after a rate-limited call, want 1", got)
	}
	// No route limit; the cluster holds one call already.
	if err := Admit(nil, lim); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `cluster "c" is at max_requests (1 calls in flight)`) {
		t.Fatalf("over max_requests: %v", err)
	}
	lim.Release()
	if err := Admit(nil, lim); err != nil {
		t.Fatalf("after release: %v", err)
	}
	lim.Release()
	if err := Admit(nil, nil); err != nil {
		t.Fatalf("no limits at all: %v", err)
	}
}

// TestAdmitRefusalAllocs: a refused call allocates nothing, its status
// being built once per route or limiter. Not parallel: AllocsPerRun.
func TestAdmitRefusalAllocs(t *testing.T) {
	clk := time.Unix(0, 0)
	rl := (&Route{Name: "r", RateLimit: NewTokenBucket(1, 1, func() time.Time { return clk })}).Init()
	lim := NewLimiter(0, 0).WithLimits("c", 1, 0)
	_ = Admit(rl, lim)
	if n := testing.AllocsPerRun(100, func() { _ = Admit(rl, lim) }); n != 0 {
		t.Fatalf("a rate-limited call allocates %.0f", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Admit(nil, lim) }); n != 0 {
		t.Fatalf("a call over max_requests allocates %.0f", n)
	}
}

func TestRouteStatuses(t *testing.T) {
	t.Parallel()
	r := (&Route{IdleTimeout: time.Minute, Retry: &Retry{PerTryTimeout: 300 * time.Millisecond}}).Init()
	if st := status.Convert(r.IdleErr()); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "idle_timeout 1m0s") {
		t.Fatalf("idle status %v", st)
	}
	if st := status.Convert(r.PerTryErr()); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "per_try_timeout 300ms") {
		t.Fatalf("per-try status %v", st)
	}
	if (&Route{}).Init().IdleErr() != nil {
		t.Fatal("idle status without idle_timeout")
	}
}
