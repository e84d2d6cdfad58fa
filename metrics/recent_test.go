package metrics_test

import (
	"math"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/metrics"
)

// clock is a settable clock for Recent.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func near(got *float64, want, tol float64) bool { return got != nil && math.Abs(*got-want) <= tol }

// TestRecent: rates, error rates and quantiles come from the counters'
// change between snapshots that earlier requests took, per route and per
// cluster; a gap longer than the window starts over.
func TestRecent(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	m := metrics.New(metrics.WithClock(clk.now))
	call := func(route, cluster string, code codes.Code, d time.Duration) {
		observe(m, callrecord.Call{Method: "/u.Users/Get", Route: route, Cluster: cluster, Code: code, Duration: d})
	}
	call("users", "users-a", codes.OK, time.Millisecond) // before anyone looked: not in any window

	first := m.Recent()
	if first.Window != 0 || first.Routes["users"] == nil || first.Routes["users"].Rate != 0 || first.Clusters["users-a"] == nil {
		t.Fatalf("first look: %+v", first)
	}
	clk.add(10 * time.Second)
	for range 90 {
		call("users", "users-a", codes.OK, 3*time.Millisecond) // bucket (2.5ms, 5ms]
	}
	for range 10 {
		call("users", "users-b", codes.Unavailable, 200*time.Millisecond) // bucket (100ms, 250ms]
	}
	st := m.Recent()
	u := st.Routes["users"]
	if st.Window != 10 || u.Calls != 100 || u.Rate != 10 || math.Abs(u.ErrorRate-0.1) > 1e-9 {
		t.Fatalf("users after 10s: window %v, %+v", st.Window, u)
	}
	// p50: rank 50 of 90 in (2.5, 5]: 2.5 + 2.5*50/90.
	if !near(u.P50, 2.5+2.5*50/90, 0.001) || !near(u.P99, 100+150*9/10.0, 0.001) {
		t.Errorf("p50 %v p99 %v", *u.P50, *u.P99)
	}
	if a, b := st.Clusters["users-a"], st.Clusters["users-b"]; a.Calls != 90 || a.ErrorRate != 0 || b.Calls != 10 || b.ErrorRate != 1 {
		t.Errorf("clusters: a %+v, b %+v", a, b)
	}
	if len(u.Points) != 1 || u.Points[0].Rate != 10 || u.Points[0].Errors != 1 || u.Points[0].T != clk.now().UnixMilli() {
		t.Errorf("points %+v", u.Points)
	}

	// A poll within recentSpacing adds no snapshot and no point.
	clk.add(100 * time.Millisecond)
	if p := m.Recent().Routes["users"].Points; len(p) != 1 {
		t.Errorf("points after a quick poll: %d, want 1 (no point for 100ms)", len(p))
	}
	clk.add(5 * time.Second)
	call("users", "users-a", codes.OK, time.Millisecond)
	if st := m.Recent(); st.Window != 15.1 || len(st.Routes["users"].Points) != 2 {
		t.Errorf("window %v points %d", st.Window, len(st.Routes["users"].Points))
	}

	// Nobody looked for two minutes: the old snapshots are gone.
	clk.add(2 * time.Minute)
	if st := m.Recent(); st.Window != 0 || st.Routes["users"].Rate != 0 || len(st.Routes["users"].Points) != 0 {
		t.Errorf("after a gap: %+v", st.Routes["users"])
	}
}
