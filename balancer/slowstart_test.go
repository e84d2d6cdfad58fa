package balancer

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/testkit"
)

func TestSlowStartPercent(t *testing.T) {
	t.Parallel()
	window := 10 * time.Second
	since := time.Unix(1000, 0)
	tests := []struct {
		elapsed time.Duration
		want    uint64
	}{
		{-time.Second, SlowStartMinPercent}, // clock went back: the floor
		{0, SlowStartMinPercent},
		{500 * time.Millisecond, SlowStartMinPercent}, // 5% is below the floor
		{time.Second, 10},
		{2500 * time.Millisecond, 25},
		{5 * time.Second, 50},
		{9999 * time.Millisecond, 99},
		{window, 100}, // over: full weight
		{time.Hour, 100},
	}
	for _, tt := range tests {
		if got := slowStartPercent(since, since.Add(tt.elapsed), window); got != tt.want {
			t.Errorf("slowStartPercent(%v into %v) = %d, want %d", tt.elapsed, window, got, tt.want)
		}
	}
}

// shareOf picks n times and returns the share of id. It keeps 16 calls
// in flight, finishing the oldest before each new pick, so that the load
// the P2C policies compare is there to compare (with none, they always
// prefer the heavier of two endpoints).
func shareOf(t *testing.T, c *Cluster, id string, n int) float64 {
	t.Helper()
	got := 0
	var inflight []*Endpoint
	for range n {
		if len(inflight) == 16 {
			c.Done(inflight[0], c.now(), codes.OK, false)
			inflight = inflight[1:]
		}
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		if e.ID() == id {
			got++
		}
		inflight = append(inflight, e)
	}
	for _, e := range inflight {
		c.Done(e, c.now(), codes.OK, false)
	}
	return float64(got) / float64(n)
}

// TestSlowStartRamp: a joining endpoint's share of two grows with the
// injected clock as weight×max(10%, t/window) predicts, for each weighted
// policy, and ends at an even split with no ramp left to schedule. An
// endpoint back from an outlier ejection ramps again; ring_hash never
// ramps.
func TestSlowStartRamp(t *testing.T) {
	t.Parallel()
	const window = 10 * time.Second
	// peak_ewma's choice also depends on latency estimates that age with
	// the injected clock; its ramp is checked on the weights it builds with
	// (TestSlowStartPeakEWMAWeights).
	for _, policy := range []string{RoundRobin, LeastRequest} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			c := newTestCluster(t, Options{
				Policy:    policy,
				SlowStart: window,
				Health:    HealthOptions{Disabled: true},
				Outlier:   OutlierOptions{ConsecutiveFailures: 1, MaxEjectionPercent: 100, BaseEjectionTime: time.Second},
				Now:       clock.Now,
				Rand:      seededRand(7),
			})
			all := endpoints(2)
			old, joining := all[0].ID, all[1].ID
			c.Update(all[:1])
			clock.Advance(window)
			barrier(c, all[:1])
			c.Update(all) // joining starts serving now
			if st, _ := statusOf(c, joining); st.SlowStartUntil != clock.Now().Add(window) || st.EffectiveWeight != 0.1 {
				t.Fatalf("joined endpoint status %+v, want ramping until %v at weight 0.1", st, clock.Now().Add(window))
			}
			if st, _ := statusOf(c, old); !st.SlowStartUntil.IsZero() || st.EffectiveWeight != 1 {
				t.Fatalf("old endpoint status %+v, want full weight", st)
			}
			// Expected shares f/(1+f) for a weight factor f. The P2C
			// policies only approximate weights (each pick compares two
			// of two endpoints by load/weight with no load here), so the
			// bounds are about the ramp, not the exact split.
			var prev float64
			for i, at := range []time.Duration{0, 3 * time.Second, 6 * time.Second, window} {
				if i > 0 {
					clock.Advance(at - []time.Duration{0, 3 * time.Second, 6 * time.Second, window}[i-1])
				}
				barrier(c, all)
				share := shareOf(t, c, joining, 2000)
				t.Logf("%s: %v into the window: share %.3f", policy, at, share)
				if i > 0 && share <= prev {
					t.Errorf("share did not grow: %.3f after %.3f", share, prev)
				}
				prev = share
			}
			if prev < 0.4 {
				t.Errorf("share after the window %.3f, want about 0.5", prev)
			}
			c.mu.Lock()
			rampNext := c.rampNext
			c.mu.Unlock()
			if !rampNext.IsZero() {
				t.Errorf("a ramp step is still scheduled at %v after every window ended", rampNext)
			}

			// Back from an outlier ejection: the ramp starts over.
			for {
				e := pickID(t, c, joining)
				c.Done(e, clock.Now(), codes.Unavailable, false)
				barrier(c, all)
				if st, _ := statusOf(c, joining); st.State == StateEjected {
					break
				}
			}
			clock.Advance(time.Second)
			barrier(c, all)
			st, _ := statusOf(c, joining)
			if st.State != StateServing || st.SlowStartUntil.IsZero() {
				t.Fatalf("after its ejection: %+v, want serving and ramping", st)
			}
			if share := shareOf(t, c, joining, 2000); share > 0.2 {
				t.Errorf("share right after returning %.3f, want about 0.1", share)
			}
		})
	}
	t.Run(RingHash, func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		c := newTestCluster(t, Options{Policy: RingHash, HashHeader: "k", SlowStart: window, Health: HealthOptions{Disabled: true}, Now: clock.Now})
		c.Update(endpoints(2))
		for _, st := range c.Status().Endpoints {
			if !st.SlowStartUntil.IsZero() || st.EffectiveWeight != 1 {
				t.Errorf("ring_hash endpoint %+v ramps", st)
			}
		}
		if c.Status().SlowStart != 0 {
			t.Errorf("ring_hash status shows slow start %v", c.Status().SlowStart)
		}
	})
}

// TestSlowStartPeakEWMAWeights: peak_ewma builds with the ramped weights.
func TestSlowStartPeakEWMAWeights(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newTestCluster(t, Options{Policy: PeakEWMA, SlowStart: 10 * time.Second, Health: HealthOptions{Disabled: true}, Now: clock.Now})
	all := endpoints(2, 2, 2)
	c.Update(all[:1])
	clock.Advance(time.Minute)
	c.Update(all)
	clock.Advance(4 * time.Second)
	barrier(c, all)
	w := c.picker.Load().p.(*ewmaPicker).weights
	if w[0] != 200 || w[1] != 80 {
		t.Fatalf("weights %v 4s into a 10s window, want [200 80] (weight 2, scaled by 100, at 100%% and 40%%)", w)
	}
}

// TestSlowStartOffCostsNothing: without slow start no build weight is set
// and no ramp step is scheduled.
func TestSlowStartOffCostsNothing(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, Options{Health: HealthOptions{Disabled: true}})
	c.Update(endpoints(3, 1, 2, 3))
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.rampNext.IsZero() {
		t.Errorf("ramp scheduled with slow start off")
	}
	for _, e := range c.order {
		if e.buildWeight != 0 {
			t.Errorf("%s build weight %d with slow start off", e.id, e.buildWeight)
		}
	}
}

// TestSlowStartRealClock runs the ramp on the real clock: the loop's own
// timer must step the weights without any other event and stop at the end.
func TestSlowStartRealClock(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, Options{SlowStart: 300 * time.Millisecond, Health: HealthOptions{Disabled: true}})
	all := endpoints(2)
	c.Update(all)
	testkit.WaitFor(t, 5*time.Second, "the ramp to end", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.rampNext.IsZero() && c.order[0].buildWeight == 0
	})
	for _, st := range c.Status().Endpoints {
		if st.EffectiveWeight != 1 || !st.SlowStartUntil.IsZero() {
			t.Errorf("after the window: %+v", st)
		}
	}
}

// TestLocalityFilter is the zone rule on bare endpoints.
func TestLocalityFilter(t *testing.T) {
	t.Parallel()
	// Each endpoint is zone letter + kind: S serving, N NOT_SERVING,
	// P pending; zone "-" is unzoned.
	mk := func(spec []string) []*Endpoint {
		eps := bareEndpoints(make([]uint32, len(spec))...)
		for i, s := range spec {
			if s[0] != '-' {
				eps[i].zone = s[:1]
			}
			switch s[1] {
			case 'S':
				eps[i].health = healthServing
			case 'N':
				eps[i].health = healthNotServing
			}
		}
		return eps
	}
	tests := []struct {
		spec      []string
		local     string
		min       int
		panicking bool
		want      string // indices picked
		wantZone  string
	}{
		{[]string{"aS", "aS", "bS", "-S"}, "a", 70, false, "01", "a"},
		{[]string{"aS", "aN", "bS", "-S"}, "a", 70, false, "023", ""}, // 50% < 70%
		{[]string{"aS", "aN", "bS", "-S"}, "a", 50, false, "0", "a"},  // 50% is not below 50%
		{[]string{"aS", "aP", "bS"}, "a", 70, false, "0", "a"},        // pending counts for nothing
		{[]string{"aN", "bS", "-S"}, "a", 0, false, "12", ""},         // no local endpoint serves
		{[]string{"aS", "bS"}, "", 70, false, "01", ""},               // off
		{[]string{"aS", "bS"}, "c", 70, false, "01", ""},              // no endpoint in the local zone
		{[]string{"aS", "aS", "bS"}, "a", 70, true, "012", ""},        // panic ignores zones
		{[]string{"-S", "bS"}, "a", 70, false, "01", ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/%s/%d/%v", tt.spec, tt.local, tt.min, tt.panicking), func(t *testing.T) {
			t.Parallel()
			live := mk(tt.spec)
			var eps []*Endpoint
			for _, e := range live {
				if tt.panicking || e.pickable() {
					eps = append(eps, e)
				}
			}
			got, zone := localityFilter(live, eps, LocalityOptions{LocalZone: tt.local, MinHealthyPercent: tt.min}, tt.panicking)
			idx := ""
			for _, e := range got {
				idx += fmt.Sprint(indexOf(live, e))
			}
			if idx != tt.want || zone != tt.wantZone {
				t.Fatalf("localityFilter = %s zone %q, want %s zone %q", idx, zone, tt.want, tt.wantZone)
			}
		})
	}
}

// TestLocalityCluster: zones from discovery reach the status, picks stay
// local, and an outlier ejection in the local zone spreads them.
func TestLocalityCluster(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, Options{
		Health:   HealthOptions{Disabled: true},
		Locality: LocalityOptions{LocalZone: "a", MinHealthyPercent: 70},
		Outlier:  OutlierOptions{ConsecutiveFailures: 1, MaxEjectionPercent: 100, BaseEjectionTime: time.Hour},
	})
	snap := endpoints(4)
	for i, z := range []string{"a", "a", "b", ""} {
		snap[i].Zone = z
	}
	c.Update(snap)
	st := c.Status()
	if st.LocalZone != "a" || st.PickZone != "a" || st.Endpoints[2].Zone != "b" || st.Endpoints[3].Zone != "" {
		t.Fatalf("status %+v, want zones a a b \"\" picking in a", st)
	}
	counts := map[string]int{}
	for range 400 {
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[e.zone]++
		c.Done(e, time.Now(), codes.OK, false)
	}
	if counts["a"] != 400 {
		t.Fatalf("picks by zone %v, want all 400 in a", counts)
	}
	e := pickID(t, c, snap[0].ID)
	c.Done(e, time.Now(), codes.Unavailable, false)
	waitState(t, c, snap[0].ID, StateEjected)
	clear(counts)
	for range 300 {
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[e.zone]++
		c.Done(e, time.Now(), codes.OK, false)
	}
	if c.Status().PickZone != "" || counts["a"] != 100 || counts["b"] != 100 || counts[""] != 100 {
		t.Fatalf("picks by zone %v (pick zone %q), want 100 each over a, b and unzoned", counts, c.Status().PickZone)
	}
	// The ejected endpoint stays out for an hour; two new local endpoints
	// bring the share to 3 of 4 serving, above 70%: picks stay local again.
	for _, p := range []string{"127.0.0.1:29998", "127.0.0.1:29999"} {
		snap = append(snap, discovery.Endpoint{ID: p, Address: p, Weight: 1, Zone: "a"})
	}
	c.Update(snap)
	if z := c.Status().PickZone; z != "a" {
		t.Fatalf("pick zone %q with 3 of 4 local endpoints serving, want a", z)
	}
}
