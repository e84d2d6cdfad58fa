package balancer

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// benchCluster returns a cluster of n serving endpoints (lazy connections,
// no network) and a set of request headers with distinct hash keys.
func benchCluster(tb testing.TB, policy string, n int, weighted bool) (*Cluster, []metadata.MD) {
	tb.Helper()
	c := newTestCluster(tb, Options{Policy: policy, HashHeader: "x-user", Health: HealthOptions{Disabled: true}})
	var weights []uint32
	if weighted {
		for i := range n {
			weights = append(weights, uint32(1+i%3))
		}
	}
	c.Update(endpoints(n, weights...))
	headers := make([]metadata.MD, 256)
	for i := range headers {
		headers[i] = metadata.Pairs("x-user", "user-"+strconv.Itoa(i))
	}
	return c, headers
}

// BenchmarkPick measures one call's balancer cost: Pick plus Done.
func BenchmarkPick(b *testing.B) {
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA, RingHash} {
		for _, n := range []int{3, 30, 300} {
			b.Run(fmt.Sprintf("%s/%d", policy, n), func(b *testing.B) {
				c, headers := benchCluster(b, policy, n, true)
				start := time.Now()
				info := PickInfo{Method: "/users.v1.Users/GetUser"}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					info.Header = headers[i&255]
					i++
					e, err := c.Pick(&info)
					if err != nil {
						b.Fatal(err)
					}
					c.Done(e, start, codes.OK, false)
				}
			})
		}
	}
}

// BenchmarkPickSlowStartLocality is BenchmarkPick with slow start and
// zone-aware balancing on, while the newest endpoints ramp: both are
// decided when the picker is built, so a pick should cost what it costs
// without them, with 0 allocs/op.
func BenchmarkPickSlowStartLocality(b *testing.B) {
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA} {
		b.Run(policy, func(b *testing.B) {
			c := rampingCluster(b, policy)
			start := time.Now()
			info := PickInfo{Method: "/users.v1.Users/GetUser"}
			b.ReportAllocs()
			for b.Loop() {
				e, err := c.Pick(&info)
				if err != nil {
					b.Fatal(err)
				}
				c.Done(e, start, codes.OK, false)
			}
		})
	}
}

// rampingCluster is 30 weighted endpoints over three zones with the local
// zone healthy, slow start on with a window long enough that the last
// third, added after the others, ramps for the whole benchmark.
func rampingCluster(tb testing.TB, policy string) *Cluster {
	tb.Helper()
	c := newTestCluster(tb, Options{
		Policy:    policy,
		SlowStart: time.Hour,
		Locality:  LocalityOptions{LocalZone: "z0", MinHealthyPercent: 70},
		Health:    HealthOptions{Disabled: true},
	})
	eps := endpoints(30, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3)
	for i := range eps {
		eps[i].Zone = "z" + strconv.Itoa(i%3)
	}
	c.Update(eps[:20])
	c.Update(eps)
	if st := c.Status(); st.PickZone != "z0" || st.Endpoints[len(st.Endpoints)-1].SlowStartUntil.IsZero() {
		tb.Fatalf("bench cluster not local and ramping: %+v", st)
	}
	return c
}

// BenchmarkPickParallel is BenchmarkPick from GOMAXPROCS goroutines, where
// contention on the shared counters would show.
func BenchmarkPickParallel(b *testing.B) {
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA, RingHash} {
		b.Run(policy, func(b *testing.B) {
			c, headers := benchCluster(b, policy, 30, true)
			start := time.Now()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					info := PickInfo{Header: headers[i&255]}
					i++
					e, err := c.Pick(&info)
					if err != nil {
						b.Error(err)
						return
					}
					c.Done(e, start, codes.OK, false)
				}
			})
		})
	}
}

// TestPickAllocs holds the data path to zero allocations: Pick and Done
// for every policy, weighted or not, with the PickInfo on the stack, the
// error path, and Done of a failed call.
func TestPickAllocs(t *testing.T) {
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA, RingHash} {
		for _, weighted := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/weighted=%v", policy, weighted), func(t *testing.T) {
				c, headers := benchCluster(t, policy, 30, weighted)
				start := time.Now()
				i := 0
				allocs := testing.AllocsPerRun(1000, func() {
					info := PickInfo{Method: "/a.B/C", Header: headers[i&255]}
					i++
					e, err := c.Pick(&info)
					if err != nil {
						t.Fatal(err)
					}
					c.Done(e, start, codes.OK, false)
				})
				if allocs != 0 {
					t.Errorf("Pick+Done: %v allocs/op, want 0", allocs)
				}
			})
		}
	}
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA} {
		t.Run("slow start and locality/"+policy, func(t *testing.T) {
			c := rampingCluster(t, policy)
			start := time.Now()
			allocs := testing.AllocsPerRun(1000, func() {
				info := PickInfo{Method: "/a.B/C"}
				e, err := c.Pick(&info)
				if err != nil {
					t.Fatal(err)
				}
				c.Done(e, start, codes.OK, false)
			})
			if allocs != 0 {
				t.Errorf("Pick+Done: %v allocs/op, want 0", allocs)
			}
		})
	}
	t.Run("failed calls", func(t *testing.T) {
		// Failures that do not reach the ejection threshold stay on the
		// atomics: nothing runs on the loop that could allocate meanwhile.
		c := newTestCluster(t, Options{Health: HealthOptions{Disabled: true}, Outlier: OutlierOptions{ConsecutiveFailures: 1 << 30}})
		c.Update(endpoints(3))
		allocs := testing.AllocsPerRun(1000, func() {
			e, err := c.Pick(nil)
			if err != nil {
				t.Fatal(err)
			}
			c.Done(e, time.Now(), codes.Unavailable, true)
		})
		if allocs != 0 {
			t.Errorf("Pick+Done(UNAVAILABLE): %v allocs/op, want 0", allocs)
		}
	})
	t.Run("no endpoint", func(t *testing.T) {
		c := newTestCluster(t, Options{Health: HealthOptions{Disabled: true}})
		c.Update(nil)
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := c.Pick(&PickInfo{}); err == nil {
				t.Fatal("Pick on an empty cluster succeeded")
			}
		})
		if allocs != 0 {
			t.Errorf("failing Pick: %v allocs/op, want 0", allocs)
		}
	})
}
