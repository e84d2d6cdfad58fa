package test

// End-to-end tests of the balancer's traffic policies (issue 18): slow
// start, zone-aware balancing (static zones and Consul node or service
// metadata) and failure-percentage outlier ejection, each through meshd
// to real backends.

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// tpCluster is the part of a /clusters entry these tests read.
type tpCluster struct {
	Status struct {
		LocalZone, PickZone string
		Endpoints           []struct {
			Address, State, Source, Reason, Zone string
			EffectiveWeight                      float64
			SlowStartUntil                       time.Time
		}
	} `json:"status"`
}

// tpStatus fetches cluster's entry of /clusters.
func tpStatus(t testing.TB, admin, cluster string) tpCluster {
	t.Helper()
	code, body := adminGet(t, admin, "/clusters")
	if code != 200 {
		t.Fatalf("/clusters: %d %s", code, body)
	}
	var out map[string]tpCluster
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("/clusters: %v", err)
	}
	return out[cluster]
}

// tpRoutes routes everything to cluster c.
const tpRoutes = `  - name: all
    match: {prefix: /}
    cluster: c`

// TestSlowStartRejoin: an endpoint back from a NOT_SERVING spell gets a
// small share of two at first and an even one only after slow_start (2s),
// rising in between, and /clusters shows its ramp.
func TestSlowStartRejoin(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "slow", 2)
	m, client := startBalanced(t, balanceConfig(tpRoutes, fmt.Sprintf(`  - name: c
    endpoints: %s
    slow_start: 2s`, addrs(bs))), map[string][]*backend.Backend{"c": bs})
	back := bs[1]
	// Both started ramping at meshd's start; wait until that is over.
	testkit.WaitFor(t, 10*time.Second, "the start-up ramp to end", func() bool {
		for _, e := range tpStatus(t, m.Admin, "c").Status.Endpoints {
			if !e.SlowStartUntil.IsZero() {
				return false
			}
		}
		return true
	})
	back.SetServing(false)
	waitState(t, m.Admin, "c", back.Addr, "ejected")
	back.SetServing(true)
	waitState(t, m.Admin, "c", back.Addr, "serving")
	t0 := time.Now()
	var ramp bool
	for _, e := range tpStatus(t, m.Admin, "c").Status.Endpoints {
		if e.Address == back.Addr {
			ramp = !e.SlowStartUntil.IsZero() && e.EffectiveWeight < 0.5
			t.Logf("rejoined: effective weight %.2f until %v", e.EffectiveWeight, e.SlowStartUntil)
		}
	}
	if !ramp {
		t.Errorf("/clusters shows no ramp for the rejoined endpoint")
	}

	// Calls for 2.6s, bucketed by time since the rejoin.
	const bucket = 500 * time.Millisecond
	var mu sync.Mutex
	hits, total := make([]int, 6), make([]int, 6)
	end := t0.Add(2600 * time.Millisecond)
	_, err := fanOut(1<<30, balanceWorkers, end, func(int) error {
		name, err := answeredBy(client)
		if err != nil {
			return err
		}
		i := min(int(time.Since(t0)/bucket), len(hits)-1)
		mu.Lock()
		total[i]++
		if name == back.Name {
			hits[i]++
		}
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	share := make([]float64, len(hits))
	for i := range hits {
		if total[i] > 0 {
			share[i] = float64(hits[i]) / float64(total[i])
		}
	}
	t.Logf("rejoined endpoint's share per %v: %.3f (calls %v)", bucket, share, total)
	for i, n := range total[:5] {
		if n < 30 {
			t.Fatalf("only %d calls in window %d; too few to judge", n, i)
		}
	}
	// Expected f/(1+f): about 0.12 over the first window, 0.5 after 2s.
	if share[0] > 0.3 {
		t.Errorf("share in the first %v %.3f: took its full share at once", bucket, share[0])
	}
	if share[4] < 0.4 {
		t.Errorf("share after the window %.3f, want about 0.5", share[4])
	}
	if !(share[0] < share[2] && share[2] < share[4]) {
		t.Errorf("share did not rise over the window: %.3f", share)
	}
}

// TestZoneAware: with the local zone healthy every call stays in it; with
// one of its three endpoints NOT_SERVING (67% < 70%) calls spread over the
// serving endpoints of every zone, the unzoned one included; when it
// serves again they come back.
func TestZoneAware(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "zone", 5)
	zones := []string{"a", "a", "a", "b", ""}
	eps := make([]string, len(bs))
	for i, b := range bs {
		if zones[i] == "" {
			eps[i] = b.Addr
		} else {
			eps[i] = fmt.Sprintf("{address: %s, zone: %s}", b.Addr, zones[i])
		}
	}
	m, client := startBalanced(t, balanceConfig(tpRoutes, fmt.Sprintf(`  - name: c
    endpoints: [%s]
    locality: {local_zone: a, min_healthy_percent: 70}`, strings.Join(eps, ", "))), map[string][]*backend.Backend{"c": bs})
	st := tpStatus(t, m.Admin, "c").Status
	if st.LocalZone != "a" || st.PickZone != "a" {
		t.Fatalf("/clusters local zone %q, pick zone %q; want a, a", st.LocalZone, st.PickZone)
	}
	for _, e := range st.Endpoints {
		for i, b := range bs {
			if b.Addr == e.Address && e.Zone != zones[i] {
				t.Errorf("/clusters: %s zone %q, want %q", e.Address, e.Zone, zones[i])
			}
		}
	}
	zoneOf := map[string]string{}
	for i, b := range bs {
		zoneOf[b.Name] = zones[i]
	}
	count := func(n int) map[string]int {
		t.Helper()
		var mu sync.Mutex
		got := map[string]int{}
		mustFanOut(t, n, balanceWorkers, 20*time.Second, func(int) error {
			name, err := answeredBy(client)
			if err != nil {
				return err
			}
			mu.Lock()
			got[zoneOf[name]+"/"+name]++
			mu.Unlock()
			return nil
		})
		return got
	}
	local := func(got map[string]int) int {
		n := 0
		for k, v := range got {
			if strings.HasPrefix(k, "a/") {
				n += v
			}
		}
		return n
	}

	got := count(500)
	t.Logf("local zone healthy: %v", got)
	if l := local(got); l*100 < 99*500 {
		t.Errorf("%d of 500 calls in the local zone, want at least 99%%", l)
	}

	bs[2].SetServing(false)
	waitState(t, m.Admin, "c", bs[2].Addr, "ejected")
	testkit.WaitFor(t, 5*time.Second, "picks to spread", func() bool { return tpStatus(t, m.Admin, "c").Status.PickZone == "" })
	got = count(800)
	t.Logf("local zone at 2 of 3: %v", got)
	// Four serving endpoints, a quarter each.
	for _, k := range []string{"b/" + bs[3].Name, "/" + bs[4].Name, "a/" + bs[0].Name} {
		if got[k] < 120 {
			t.Errorf("%s took %d of 800 calls while spreading, want about 200", k, got[k])
		}
	}

	bs[2].SetServing(true)
	waitState(t, m.Admin, "c", bs[2].Addr, "serving")
	got = count(300)
	if l := local(got); l != 300 {
		t.Errorf("after the local zone recovered %d of 300 calls stayed local: %v", l, got)
	}
}

// TestZoneFromConsul: zones come from Consul node metadata, else service
// metadata, under locality.zone_key; picks stay in the local one.
func TestZoneFromConsul(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	bs := startBackends(t, "czone", 3)
	type inst struct {
		node     string
		nodeMeta map[string]string
		svcMeta  map[string]string
		want     string
	}
	insts := []inst{
		{"node-east-a", map[string]string{"az": "east-a"}, map[string]string{"az": "ignored"}, "east-a"},
		{"node-east-b", nil, map[string]string{"az": "east-b"}, "east-b"},
		{"node-nowhere", nil, nil, ""},
	}
	for i, in := range insts {
		host, port, _ := net.SplitHostPort(bs[i].Addr)
		p, _ := strconv.Atoi(port)
		reg := &api.CatalogRegistration{Node: in.node, Address: host, NodeMeta: in.nodeMeta,
			Service: &api.AgentService{ID: "zoned-" + strconv.Itoa(i), Service: "zoned", Address: host, Port: p, Meta: in.svcMeta}}
		if _, err := agent.Client.Catalog().Register(reg, nil); err != nil {
			t.Fatalf("catalog register: %v", err)
		}
		t.Cleanup(func() { _, _ = agent.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: in.node}, nil) })
	}
	m := startMesh(t, consulConfig(agent.Addr, "c", `consul: {service: zoned}
    locality: {zone_key: az, local_zone: east-a}`))
	for _, b := range bs {
		waitState(t, m.Admin, "c", b.Addr, "serving")
	}
	st := tpStatus(t, m.Admin, "c").Status
	for i, b := range bs {
		for _, e := range st.Endpoints {
			if e.Address == b.Addr && e.Zone != insts[i].want {
				t.Errorf("%s (%s) zone %q, want %q", e.Address, insts[i].node, e.Zone, insts[i].want)
			}
		}
	}
	if st.PickZone != "east-a" {
		t.Fatalf("pick zone %q, want east-a", st.PickZone)
	}
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	for range 100 {
		name, err := answeredBy(client)
		if err != nil {
			t.Fatal(err)
		}
		if name != bs[0].Name {
			t.Fatalf("call answered by %s, outside the local zone", name)
		}
	}
}

// TestOutlierFailurePercentage: a backend failing every other call is
// ejected by the failure-percentage rule (the consecutive rule is off) and
// readmitted after base_ejection_time; the healthy ones are never ejected.
func TestOutlierFailurePercentage(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "fpct", 3)
	sick := bs[0]
	sick.FailEvery(2, codes.Unavailable)
	m, client := startBalanced(t, balanceConfig(tpRoutes, fmt.Sprintf(`  - name: c
    endpoints: %s
    outlier:
      consecutive_failures: -1
      base_ejection_time: 1s
      failure_percentage: {threshold: 40, minimum_requests: 10, interval: 200ms}`, addrs(bs))), map[string][]*backend.Backend{"c": bs})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = answeredBy(client) // the sick backend's failures are the point
				calls.Add(1)
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	var ejected endpointView
	testkit.WaitFor(t, 10*time.Second, "the sick backend to be ejected", func() bool {
		e, ok := endpointAt(t, m.Admin, "c", sick.Addr)
		ejected = e
		return ok && e.State == "ejected"
	})
	t.Logf("ejected after %d calls: %s: %s", calls.Load(), ejected.Source, ejected.Reason)
	if ejected.Source != "outlier" || !strings.Contains(ejected.Reason, "calls failed") {
		t.Fatalf("ejection %s %q, want the outlier failure-percentage rule", ejected.Source, ejected.Reason)
	}
	waitState(t, m.Admin, "c", sick.Addr, "serving")
	for _, b := range bs[1:] {
		if e, _ := endpointAt(t, m.Admin, "c", b.Addr); e.Ejections != 0 {
			t.Errorf("healthy %s ejected %d times", b.Addr, e.Ejections)
		}
	}
}
