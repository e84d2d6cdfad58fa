package balancer

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/discovery"
)

// bareEndpoints makes endpoints for picker-level tests: no connection, no
// cluster, just IDs and weights.
func bareEndpoints(weights ...uint32) []*Endpoint {
	eps := make([]*Endpoint, len(weights))
	for i, w := range weights {
		eps[i] = &Endpoint{id: fmt.Sprintf("ep%02d", i)}
		eps[i].weight.Store(w)
	}
	return eps
}

func TestRoundRobinDistribution(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		weights []uint32
		// want is each endpoint's expected share in percent, tol the
		// allowed deviation in percentage points.
		want []float64
		tol  float64
		// maxRun bounds how many picks in a row one endpoint may get: the
		// "smooth" in smooth weighted round robin.
		maxRun int
	}{
		{"equal 4", []uint32{1, 1, 1, 1}, []float64{25, 25, 25, 25}, 25 * 0.05, 1},
		{"equal weights above 1", []uint32{5, 5, 5}, []float64{100.0 / 3, 100.0 / 3, 100.0 / 3}, 1, 1},
		{"weighted 1:2:7", []uint32{1, 2, 7}, []float64{10, 20, 70}, 3, 3},
		{"weight 0 reads as 1", []uint32{0, 1}, []float64{50, 50}, 1, 1},
		{"huge weights are scaled", []uint32{4_000_000_001, 1_000_000_000}, []float64{80, 20}, 1, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			eps := bareEndpoints(tt.weights...)
			p := roundRobin{rand: seededRand(1)}.build(eps)
			const picks = 10_000
			counts := map[*Endpoint]int{}
			var last *Endpoint
			run, longest := 0, 0
			for range picks {
				e := p.pick(pickRequest{})
				counts[e]++
				if e == last {
					run++
				} else {
					run = 1
				}
				last = e
				longest = max(longest, run)
			}
			for i, e := range eps {
				got := 100 * float64(counts[e]) / picks
				t.Logf("%s: %.2f%% (want %.2f%%)", e.id, got, tt.want[i])
				if math.Abs(got-tt.want[i]) > tt.tol {
					t.Errorf("%s got %.2f%% of picks, want %.2f%% ± %.2f", e.id, got, tt.want[i], tt.tol)
				}
			}
			if longest > tt.maxRun {
				t.Errorf("one endpoint got %d picks in a row, want at most %d", longest, tt.maxRun)
			}
		})
	}
}

// TestLoadAwarePolicies runs a deterministic simulation: calls arrive every
// 100µs of virtual time on three endpoints, two answering in 1ms and one in
// 20ms, and finish through Done on the injected clock. Load-aware policies
// must send the slow endpoint far less than its fair third; round robin is
// the control that shows the simulation can tell.
func TestLoadAwarePolicies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		policy   string
		min, max float64 // allowed share of the slow endpoint
	}{
		{RoundRobin, 0.30, 0.37},
		{LeastRequest, 0, 0.15},
		{PeakEWMA, 0, 0.10},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			c := newTestCluster(t, Options{
				Policy:   tt.policy,
				Health:   HealthOptions{Disabled: true},
				Outlier:  OutlierOptions{Disabled: true},
				PeakEWMA: PeakEWMAOptions{InitialRTT: time.Millisecond},
				Now:      clock.Now,
				Rand:     seededRand(7),
			})
			eps := endpoints(3)
			c.Update(eps)
			slow := eps[2].ID
			latency := func(e *Endpoint) time.Duration {
				if e.ID() == slow {
					return 20 * time.Millisecond
				}
				return time.Millisecond
			}
			type call struct {
				ep            *Endpoint
				start, finish time.Time
			}
			var inflight []call
			counts := map[string]int{}
			const picks = 20_000
			for range picks {
				clock.Advance(100 * time.Microsecond)
				now := clock.Now()
				kept := inflight[:0]
				for _, cl := range inflight {
					if cl.finish.After(now) {
						kept = append(kept, cl)
						continue
					}
					c.Done(cl.ep, cl.start, codes.OK, false)
				}
				inflight = kept
				e, err := c.Pick(&PickInfo{})
				if err != nil {
					t.Fatalf("Pick: %v", err)
				}
				counts[e.ID()]++
				inflight = append(inflight, call{e, now, now.Add(latency(e))})
			}
			for _, cl := range inflight {
				c.Done(cl.ep, cl.start, codes.OK, false)
			}
			share := float64(counts[slow]) / picks
			t.Logf("%s: slow endpoint got %.2f%% of %d picks (fair share 33.3%%); fast: %d, %d",
				tt.policy, 100*share, picks, counts[eps[0].ID], counts[eps[1].ID])
			if share < tt.min || share > tt.max {
				t.Errorf("slow endpoint share %.3f, want in [%.2f, %.2f]", share, tt.min, tt.max)
			}
			for _, e := range c.Status().Endpoints {
				if e.Outstanding != 0 {
					t.Errorf("%s: %d calls outstanding after all Done", e.ID, e.Outstanding)
				}
			}
		})
	}
}

func TestLeastRequestWeights(t *testing.T) {
	t.Parallel()
	eps := bareEndpoints(1, 3)
	p := leastRequest{rand: seededRand(3)}.build(eps)
	// With equal load the heavier endpoint wins every comparison.
	eps[0].outstanding.Store(2)
	eps[1].outstanding.Store(2)
	for range 100 {
		if e := p.pick(pickRequest{}); e != eps[1] {
			t.Fatalf("picked %s with loads 3/1 vs 3/3", e.id)
		}
	}
	// (out+1)/weight: 1/1 beats 6/3.
	eps[0].outstanding.Store(0)
	eps[1].outstanding.Store(5)
	for range 100 {
		if e := p.pick(pickRequest{}); e != eps[0] {
			t.Fatalf("picked %s with loads 1/1 vs 6/3", e.id)
		}
	}
}

func TestPeakEWMAEstimate(t *testing.T) {
	t.Parallel()
	tau := float64(10 * time.Second)
	e := &Endpoint{}
	e.rttBits.Store(math.Float64bits(float64(time.Millisecond)))
	now := int64(0)
	observe := func(after, rtt time.Duration) float64 {
		now += int64(after)
		observeRTT(e, float64(rtt), now, tau)
		return math.Float64frombits(e.rttBits.Load())
	}
	// A sample above the estimate is taken whole: the "peak".
	if got := observe(time.Millisecond, 50*time.Millisecond); got != float64(50*time.Millisecond) {
		t.Fatalf("after a 50ms sample the estimate is %v, want 50ms", time.Duration(got))
	}
	// A lower sample moves it by 1-e^(-Δt/τ): after τ, 63% of the way.
	got := observe(10*time.Second, 10*time.Millisecond)
	want := 50e6*math.Exp(-1) + 10e6*(1-math.Exp(-1))
	if math.Abs(got-want) > 1 {
		t.Fatalf("after a 10ms sample τ later the estimate is %v, want %v", time.Duration(got), time.Duration(want))
	}
	// Without samples the cost fades toward zero, so an avoided endpoint is
	// tried again: 3τ after its last sample, e's 37ms (after the two
	// samples above) reads as 1.8ms and beats a fresh 3ms.
	fresh := &Endpoint{}
	fresh.rttBits.Store(math.Float64bits(float64(3 * time.Millisecond)))
	fresh.rttStamp.Store(now + int64(30*time.Second))
	p := peakEWMA{rand: seededRand(1), tau: tau}.build([]*Endpoint{e, fresh}).(*ewmaPicker)
	if !p.cheaper(0, 1) || p.cheaper(1, 0) {
		t.Fatalf("a %v estimate 3τ old does not beat a fresh 3ms one", time.Duration(got))
	}
	// Not so one τ after: 37ms·e⁻¹ = 13.6ms.
	fresh.rttStamp.Store(now + int64(10*time.Second))
	if p.cheaper(0, 1) {
		t.Fatalf("a %v estimate τ old beats a fresh 3ms one", time.Duration(got))
	}
}

func TestRingHash(t *testing.T) {
	t.Parallel()
	const keys = 10_000
	hdr := func(i int) metadata.MD { return metadata.Pairs("x-user", fmt.Sprintf("user-%d", i)) }
	assign := func(c *Cluster) []string {
		out := make([]string, keys)
		for i := range out {
			e, err := c.Pick(&PickInfo{Header: hdr(i)})
			if err != nil {
				t.Fatalf("Pick: %v", err)
			}
			c.Done(e, time.Now(), codes.OK, false)
			out[i] = e.ID()
		}
		return out
	}
	newRing := func(t *testing.T) *Cluster {
		return newTestCluster(t, Options{
			Policy:     RingHash,
			HashHeader: "X-User", // matched case-insensitively
			Health:     HealthOptions{Disabled: true},
			Rand:       seededRand(5),
		})
	}

	t.Run("same key same endpoint", func(t *testing.T) {
		t.Parallel()
		c := newRing(t)
		eps := endpoints(5)
		c.Update(eps)
		first := assign(c)
		// A rebuild over the same endpoints (here: a weight-free no-op
		// update) builds the same ring.
		c.Update(eps)
		second := assign(c)
		counts := map[string]int{}
		for i := range first {
			if first[i] != second[i] {
				t.Fatalf("key %d moved from %s to %s without a change", i, first[i], second[i])
			}
			counts[first[i]]++
		}
		for id, n := range counts {
			share := float64(n) / keys
			t.Logf("%s: %.1f%% of keys", id, 100*share)
			if share < 0.12 || share > 0.28 {
				t.Errorf("%s owns %.1f%% of keys, want about 20%%", id, 100*share)
			}
		}
	})

	t.Run("removing one of five moves only its keys", func(t *testing.T) {
		t.Parallel()
		c := newRing(t)
		eps := endpoints(5)
		c.Update(eps)
		before := assign(c)
		gone := eps[2].ID
		c.Update(append(eps[:2:2], eps[3:]...))
		after := assign(c)
		moved, strays := 0, 0
		for i := range before {
			if before[i] == after[i] {
				continue
			}
			moved++
			if before[i] != gone {
				strays++
			}
		}
		frac := float64(moved) / keys
		t.Logf("removing 1 of 5 endpoints moved %d of %d keys (%.3f)", moved, keys, frac)
		if frac < 0.12 || frac > 0.30 {
			t.Errorf("moved fraction %.3f, want in [0.12, 0.30]", frac)
		}
		if strays != 0 {
			t.Errorf("%d keys moved that were not on the removed endpoint", strays)
		}
		// And adding it back restores the original assignment.
		c.Update(eps)
		for i, id := range assign(c) {
			if id != before[i] {
				t.Fatalf("key %d on %s after re-adding, was on %s", i, id, before[i])
			}
		}
	})

	t.Run("ring depends only on the endpoint set", func(t *testing.T) {
		t.Parallel()
		// One cluster sees all five endpoints at once; another admits
		// them one at a time, as health checks do. Both must agree on
		// every key, or two meshd instances (or one after a reload)
		// send the same user to different backends.
		eps := endpoints(5)
		atOnce := newRing(t)
		atOnce.Update(eps)
		grown := newRing(t)
		for i := 1; i <= len(eps); i++ {
			grown.Update(eps[:i])
		}
		a, b := assign(atOnce), assign(grown)
		differ := 0
		for i := range a {
			if a[i] != b[i] {
				differ++
			}
		}
		if differ != 0 {
			t.Errorf("%d of %d keys differ between a ring built at once and one grown endpoint by endpoint", differ, keys)
		}
	})

	t.Run("weights", func(t *testing.T) {
		t.Parallel()
		c := newRing(t)
		eps := endpoints(2, 1, 3)
		c.Update(eps)
		counts := map[string]int{}
		for _, id := range assign(c) {
			counts[id]++
		}
		share := float64(counts[eps[1].ID]) / keys
		t.Logf("weight 3 of 4 owns %.1f%% of keys", 100*share)
		if share < 0.70 || share > 0.80 {
			t.Errorf("weight-3 endpoint owns %.1f%% of keys, want about 75%%", 100*share)
		}
	})

	t.Run("no key spreads at random", func(t *testing.T) {
		t.Parallel()
		c := newRing(t)
		c.Update(endpoints(5))
		counts := map[string]int{}
		for range 5000 {
			e, err := c.Pick(&PickInfo{Header: metadata.Pairs("other", "x")})
			if err != nil {
				t.Fatalf("Pick: %v", err)
			}
			c.Done(e, time.Now(), codes.OK, false)
			counts[e.ID()]++
		}
		for id, n := range counts {
			if n < 800 || n > 1200 {
				t.Errorf("%s got %d of 5000 keyless picks, want about 1000", id, n)
			}
		}
		if len(counts) != 5 {
			t.Errorf("keyless picks reached %d of 5 endpoints", len(counts))
		}
	})
}

func TestExclude(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA, RingHash} {
		for _, weights := range [][]uint32{{1, 1, 1}, {1, 2, 7}} {
			t.Run(fmt.Sprintf("%s/%v", policy, weights), func(t *testing.T) {
				t.Parallel()
				c := newTestCluster(t, Options{Policy: policy, HashHeader: "k", Health: HealthOptions{Disabled: true}})
				eps := endpoints(3, weights...)
				c.Update(eps)
				for _, skip := range eps {
					ex := endpointByID(c, skip.ID)
					for i := range 300 {
						e, err := c.Pick(&PickInfo{Exclude: ex, Header: metadata.Pairs("k", fmt.Sprint(i))})
						if err != nil {
							t.Fatalf("Pick: %v", err)
						}
						c.Done(e, time.Now(), codes.OK, false)
						if e == ex {
							t.Fatalf("picked excluded %s", skip.ID)
						}
					}
				}
				// The only endpoint is picked even when excluded.
				c.Update(eps[:1])
				only := endpointByID(c, eps[0].ID)
				e, err := c.Pick(&PickInfo{Exclude: only})
				if err != nil || e != only {
					t.Fatalf("Pick excluding the only endpoint = %v, %v; want it", e, err)
				}
				c.Done(e, time.Now(), codes.OK, false)
			})
		}
	}
}

// failAll calls Pick and Done(UNAVAILABLE) rounds times over the cluster's
// pickable endpoints, with a barrier after each round so that the loop has
// judged every failure.
func failAll(t *testing.T, c *Cluster, snapshot []discovery.Endpoint, rounds int) {
	t.Helper()
	for range rounds {
		for range len(snapshot) {
			e, err := c.Pick(nil)
			if err != nil {
				break
			}
			c.Done(e, time.Now(), codes.Unavailable, false)
		}
		barrier(c, snapshot)
	}
}

// barrier waits until the loop has processed everything before it: an
// Update with an unchanged snapshot is applied in a batch that also judges
// every endpoint Done has flagged.
func barrier(c *Cluster, snapshot []discovery.Endpoint) { c.Update(snapshot) }

func countStates(c *Cluster) map[string]int {
	m := map[string]int{}
	for _, e := range c.Status().Endpoints {
		m[e.State]++
	}
	return m
}

func TestAllDown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		allDown  string
		empty    bool
		wantPick bool
	}{
		{AllDownFail, true, false},
		{AllDownAny, true, false},
		{AllDownFail, false, false},
		{AllDownAny, false, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/empty=%v", tt.allDown, tt.empty), func(t *testing.T) {
			t.Parallel()
			c := newTestCluster(t, Options{
				Name:    "users",
				AllDown: tt.allDown,
				Health:  HealthOptions{Disabled: true},
				Outlier: OutlierOptions{ConsecutiveFailures: 1, MaxEjectionPercent: 100, BaseEjectionTime: time.Hour},
			})
			var snap []discovery.Endpoint
			if !tt.empty {
				snap = endpoints(3)
			}
			c.Update(snap)
			if !tt.empty {
				failAll(t, c, snap, 5)
				if got := countStates(c)[StateEjected]; got != 3 {
					t.Fatalf("%d of 3 endpoints ejected, want all", got)
				}
			}
			for range 10 {
				e, err := c.Pick(nil)
				if tt.wantPick {
					if err != nil {
						t.Fatalf("Pick with all_down=any: %v", err)
					}
					c.Done(e, time.Now(), codes.OK, false)
					continue
				}
				if !errors.Is(err, ErrNoEndpoint) {
					t.Fatalf("Pick = %v, %v; want ErrNoEndpoint", e, err)
				}
				if want := `no healthy endpoint in cluster "users"`; !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n, percent, wantEjected int
	}{
		{4, 0, 2}, // default 50%
		{3, 50, 1},
		{1, 50, 0},
		{10, 25, 2},
		{4, 100, 4},
		{5, -1, 0}, // 0%: never eject
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d endpoints %d%%", tt.n, tt.percent), func(t *testing.T) {
			t.Parallel()
			c := newTestCluster(t, Options{
				Health:  HealthOptions{Disabled: true},
				Outlier: OutlierOptions{ConsecutiveFailures: 2, MaxEjectionPercent: tt.percent, BaseEjectionTime: time.Hour},
			})
			snap := endpoints(tt.n)
			c.Update(snap)
			failAll(t, c, snap, 8)
			states := countStates(c)
			if states[StateEjected] != tt.wantEjected || states[StateServing] != tt.n-tt.wantEjected {
				t.Fatalf("states %v, want %d ejected of %d", states, tt.wantEjected, tt.n)
			}
			st := c.Status()
			if st.Healthy != tt.n-tt.wantEjected || st.Total != tt.n {
				t.Fatalf("Healthy/Total = %d/%d, want %d/%d", st.Healthy, st.Total, tt.n-tt.wantEjected, tt.n)
			}
			// The endpoints still serving keep taking calls: the cap keeps
			// the cluster up although every endpoint fails.
			if tt.wantEjected < tt.n {
				for range 20 {
					e, err := c.Pick(nil)
					if err != nil {
						t.Fatalf("Pick with %d of %d ejected: %v", tt.wantEjected, tt.n, err)
					}
					if s, _ := statusOf(c, e.ID()); s.State != StateServing {
						t.Fatalf("picked %s in state %s", e.ID(), s.State)
					}
					c.Done(e, time.Now(), codes.OK, false)
				}
			}
		})
	}
}

// TestOutlierTimes follows one endpoint through ejections on a fake clock:
// growing ejection times, the cap, decay of the multiplier, and what counts
// as a failure.
func TestOutlierTimes(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newTestCluster(t, Options{
		Health: HealthOptions{Disabled: true},
		Outlier: OutlierOptions{
			ConsecutiveFailures: 3,
			MaxEjectionPercent:  100,
			BaseEjectionTime:    time.Second,
			MaxEjectionTime:     3 * time.Second,
			Interval:            10 * time.Second,
		},
		Now: clock.Now,
	})
	snap := endpoints(1)
	id := snap[0].ID
	c.Update(snap)
	call := func(code codes.Code, connFailure bool) {
		t.Helper()
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		c.Done(e, clock.Now(), code, connFailure)
	}
	expect := func(state, reason string, ejections int) {
		t.Helper()
		barrier(c, snap)
		s, _ := statusOf(c, id)
		if s.State != state || !strings.Contains(s.Reason, reason) || s.Ejections != ejections {
			t.Fatalf("status %s/%q/%d ejections, want %s/%q/%d", s.State, s.Reason, s.Ejections, state, reason, ejections)
		}
		if s.Since != clock.Now() {
			t.Fatalf("Since = %v, want the transition time %v", s.Since, clock.Now())
		}
	}
	fail3 := func() {
		for range 3 {
			call(codes.Unavailable, false)
		}
	}

	// Two failures, a success (any code not in FailureCodes), two more: no
	// three in a row.
	call(codes.Unavailable, false)
	call(codes.Unavailable, false)
	call(codes.NotFound, false)
	call(codes.Unavailable, false)
	call(codes.Unavailable, false)
	barrier(c, snap)
	if s, _ := statusOf(c, id); s.State != StateServing {
		t.Fatalf("ejected after a success broke the run: %+v", s)
	}
	call(codes.Unavailable, false) // third in a row
	expect(StateEjected, "ejected for 1s", 1)
	if _, err := c.Pick(nil); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("Pick while the only endpoint is ejected: %v", err)
	}

	clock.Advance(999 * time.Millisecond)
	barrier(c, snap)
	if s, _ := statusOf(c, id); s.State != StateEjected {
		t.Fatalf("returned before its ejection time: %+v", s)
	}
	clock.Advance(time.Millisecond)
	expect(StateServing, "", 1)

	fail3()
	expect(StateEjected, "ejected for 2s", 2)
	clock.Advance(2 * time.Second)
	expect(StateServing, "", 2)
	fail3()
	expect(StateEjected, "ejected for 3s", 3)
	clock.Advance(3 * time.Second)
	expect(StateServing, "", 3)
	fail3()
	expect(StateEjected, "ejected for 3s", 4) // capped by MaxEjectionTime
	clock.Advance(3 * time.Second)
	expect(StateServing, "", 4)

	// Two intervals of good behaviour take two steps off the multiplier.
	clock.Advance(20 * time.Second)
	fail3()
	expect(StateEjected, "ejected for 2s", 5)
	clock.Advance(2 * time.Second)
	expect(StateServing, "", 5)

	// Transport failures count whatever the status code.
	for range 3 {
		call(codes.OK, true)
	}
	expect(StateEjected, "3 consecutive failures", 6)
}

func TestFailurePercentage(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, Options{
		Health: HealthOptions{Disabled: true},
		Outlier: OutlierOptions{
			ConsecutiveFailures: -1, // only the percentage rule
			FailurePercentage:   50,
			FailureMinRequests:  10,
			Interval:            20 * time.Millisecond,
			BaseEjectionTime:    time.Hour,
		},
	})
	snap := endpoints(2)
	c.Update(snap)
	bad, good := snap[0].ID, snap[1].ID
	// 60% failures on bad, none on good, spread evenly so that any
	// interval boundary leaves both windows at about 60%.
	for i := range 200 {
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		code := codes.OK
		if e.ID() == bad && i%5 < 3 {
			code = codes.Unavailable
		}
		c.Done(e, time.Now(), code, false)
		if s, _ := statusOf(c, bad); s.State == StateEjected {
			break
		}
	}
	s := waitState(t, c, bad, StateEjected)
	t.Logf("ejected: %s", s.Reason)
	if s.Source != SourceOutlier || !strings.Contains(s.Reason, "calls failed") {
		t.Fatalf("status %+v, want an outlier failure-percentage ejection", s)
	}
	if g, _ := statusOf(c, good); g.State != StateServing {
		t.Fatalf("good endpoint %+v, want serving", g)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		want string // substring of the error; "" = valid
	}{
		{"zero but name", Options{Name: "a"}, ""},
		{"all policies", Options{Name: "a", Policy: PeakEWMA, AllDown: AllDownAny}, ""},
		{"ring hash", Options{Name: "a", Policy: RingHash, HashHeader: "x-user", VirtualNodes: 512}, ""},
		{"no name", Options{}, "name is required"},
		{"unknown policy", Options{Name: "a", Policy: "random"}, `unknown policy "random"`},
		{"ring hash without header", Options{Name: "a", Policy: RingHash}, "requires a hash header"},
		{"ring too big", Options{Name: "a", VirtualNodes: MaxVirtualNodes + 1}, "virtual nodes"},
		{"negative ring", Options{Name: "a", VirtualNodes: -1}, "virtual nodes"},
		{"all down", Options{Name: "a", AllDown: "some"}, `unknown all_down "some"`},
		{"negative drain", Options{Name: "a", DrainTimeout: -time.Second}, "drain timeout"},
		{"negative backoff", Options{Name: "a", Health: HealthOptions{BackoffMax: -1}}, "health backoff max"},
		{"percentage", Options{Name: "a", Outlier: OutlierOptions{FailurePercentage: 101}}, "failure percentage"},
		{"max ejection percent", Options{Name: "a", Outlier: OutlierOptions{MaxEjectionPercent: 120}}, "max ejection percent"},
		{"min requests", Options{Name: "a", Outlier: OutlierOptions{FailureMinRequests: -2}}, "min requests"},
		{"code", Options{Name: "a", Outlier: OutlierOptions{FailureCodes: []codes.Code{99}}}, "not a gRPC status code"},
		{"negative interval", Options{Name: "a", Outlier: OutlierOptions{Interval: -1}}, "outlier interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.opts.Validate()
			c, cerr := NewCluster(tt.opts, dialPlain)
			if cerr == nil {
				c.Close()
			}
			switch {
			case tt.want == "" && (err != nil || cerr != nil):
				t.Fatalf("Validate = %v, NewCluster = %v; want both nil", err, cerr)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.want)
			case tt.want != "" && cerr == nil:
				t.Fatalf("NewCluster accepted options Validate rejects")
			}
		})
	}
	if _, err := NewCluster(Options{Name: "a"}, nil); err == nil {
		t.Fatal("NewCluster accepted a nil dialer")
	}
	// Several problems are all reported.
	err := (&Options{Policy: "x", AllDown: "y"}).Validate()
	for _, want := range []string{"name", "policy", "all_down"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to mention %s", err, want)
		}
	}
}
