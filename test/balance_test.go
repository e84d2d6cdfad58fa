package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/test/backend"
)

// The balancing tests drive every call over ONE client connection to
// meshd, so any spread they see is meshd's per-call balancing, never the
// client's per-connection choice. Calls run on several goroutines at once
// to keep the tests quick; the assertions are on counts, which concurrency
// does not change for round_robin (an atomic counter) and changes only by
// chance for the random choices (P2C, route splits), whose bounds are
// several standard deviations wide.

const (
	balanceWorkers     = 8
	balanceCallTimeout = 10 * time.Second
)

// balanceConfig is a meshd config with the given routes and clusters (YAML
// block sequence items, indented by two).
func balanceConfig(routes, clusters string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
%s
clusters:
%s`, routes, clusters)
}

// weightedEndpoints lists bs with weights ws as a YAML flow sequence of
// {address, weight} items.
func weightedEndpoints(bs []*backend.Backend, ws []int) string {
	s := make([]string, len(bs))
	for i, b := range bs {
		s[i] = fmt.Sprintf("{address: %s, weight: %d}", b.Addr, ws[i])
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// startBalanced starts meshd with yaml, waits until every backend of every
// listed cluster is serving (so no pick is made over a partial set), and
// returns meshd and a client on one connection to it.
func startBalanced(t *testing.T, yaml string, clusters map[string][]*backend.Backend) (*mesh, testpb.TestServiceClient) {
	t.Helper()
	m := startMesh(t, yaml)
	for name, bs := range clusters {
		for _, b := range bs {
			waitState(t, m.Admin, name, b.Addr, "serving")
		}
	}
	return m, testpb.NewTestServiceClient(dial(t, m.Addr))
}

// fanOut calls call(i) for i in [0, n) on workers goroutines until all are
// done, one fails, or the deadline passes (no new call starts after it).
// It returns how many calls succeeded and the first failure.
func fanOut(n, workers int, deadline time.Time, call func(i int) error) (int, error) {
	var (
		next, done atomic.Int64
		first      atomic.Pointer[error]
		wg         sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first.Load() == nil && time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := call(int(i)); err != nil {
					err = fmt.Errorf("call %d: %w", i, err)
					first.CompareAndSwap(nil, &err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return int(done.Load()), *e
	}
	return int(done.Load()), nil
}

// mustFanOut is fanOut that fails the test unless all n calls succeed
// within budget.
func mustFanOut(t *testing.T, n, workers int, budget time.Duration, call func(i int) error) {
	t.Helper()
	done, err := fanOut(n, workers, time.Now().Add(budget), call)
	if err != nil {
		t.Fatal(err)
	}
	if done != n {
		t.Fatalf("only %d of %d calls done within %v", done, n, budget)
	}
}

// answeredBy makes one EmptyCall with the metadata kv and returns the
// backend that answered (its x-backend header).
func answeredBy(client testpb.TestServiceClient, kv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), balanceCallTimeout)
	defer cancel()
	if len(kv) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	var hdr, tr metadata.MD
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
		return "", err
	}
	b := backendOf(hdr, tr)
	if b == "" {
		return "", fmt.Errorf("no x-backend in the response (header %v, trailer %v)", hdr, tr)
	}
	return b, nil
}

// tally counts the non-empty names.
func tally(names []string) map[string]int {
	c := map[string]int{}
	for _, n := range names {
		if n != "" {
			c[n]++
		}
	}
	return c
}

// callsSince returns each backend's calls since the counts in before.
func callsSince(bs []*backend.Backend, before []int64) []int64 {
	d := make([]int64, len(bs))
	for i, b := range bs {
		d[i] = b.Calls() - before[i]
	}
	return d
}

func callCounts(bs []*backend.Backend) []int64 {
	c := make([]int64, len(bs))
	for i, b := range bs {
		c[i] = b.Calls()
	}
	return c
}

// TestBalanceRoundRobin: 4,000 calls over one connection land within ±5%
// of a quarter on each of 4 backends.
func TestBalanceRoundRobin(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "rr", 4)
	_, client := startBalanced(t, balanceConfig(
		"  - {name: all, match: {prefix: /}, cluster: rr}",
		"  - {name: rr, lb: round_robin, endpoints: "+addrs(bs)+"}"),
		map[string][]*backend.Backend{"rr": bs})
	const n = 4000
	before := callCounts(bs)
	mustFanOut(t, n, balanceWorkers, 60*time.Second, func(int) error {
		_, err := answeredBy(client)
		return err
	})
	got := callsSince(bs, before)
	t.Logf("round_robin over 4 backends, %d calls: %v", n, got)
	for i, c := range got {
		if c < n/4*95/100 || c > n/4*105/100 {
			t.Errorf("%s got %d of %d calls, want %d±5%%", bs[i].Name, c, n, n/4)
		}
	}
}

// TestBalanceWeighted: endpoint weights 1:2:7 give shares within ±3
// points of 10/20/70% over 5,000 calls.
func TestBalanceWeighted(t *testing.T) {
	t.Parallel()
	weights := []int{1, 2, 7}
	bs := startBackends(t, "w", 3)
	_, client := startBalanced(t, balanceConfig(
		"  - {name: all, match: {prefix: /}, cluster: weighted}",
		"  - {name: weighted, endpoints: "+weightedEndpoints(bs, weights)+"}"),
		map[string][]*backend.Backend{"weighted": bs})
	const n = 5000
	before := callCounts(bs)
	mustFanOut(t, n, balanceWorkers, 60*time.Second, func(int) error {
		_, err := answeredBy(client)
		return err
	})
	got := callsSince(bs, before)
	shares := make([]string, len(bs))
	for i, c := range got {
		share := 100 * float64(c) / n
		shares[i] = fmt.Sprintf("%s(w%d)=%.1f%%", bs[i].Name, weights[i], share)
		want := 100 * float64(weights[i]) / 10
		if share < want-3 || share > want+3 {
			t.Errorf("%s (weight %d) got %d of %d calls (%.1f%%), want %.0f%%±3", bs[i].Name, weights[i], c, n, share, want)
		}
	}
	t.Logf("weights 1:2:7 over %d calls: %s", n, strings.Join(shares, " "))
}

// withLatency makes a backend's TestService calls take at least d, as a
// slow machine's would; health checks stay fast so the backend stays
// admitted.
func withLatency(d time.Duration) backend.Option {
	return backend.WithServerOptions(grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			if strings.HasPrefix(info.FullMethod, "/grpc.testing.TestService/") {
				t := time.NewTimer(d)
				defer t.Stop()
				select {
				case <-t.C:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return next(ctx, req)
		}))
}

// TestBalanceLatencyAware: with one backend 10× slower than the other two,
// least_request and peak_ewma send it well under its even third of 16
// closed-loop workers' calls; round_robin, the control, sends it a third.
//
// The delays are long (50ms and 500ms) so that they, not meshd's own time
// per call, make the difference: on a busy 2-core machine under -race a
// call through meshd can queue for tens of milliseconds, and with 2ms and
// 20ms backends that queueing shrank the real ratio to under 2×, which
// least_request rightly answered with a 20% share.
func TestBalanceLatencyAware(t *testing.T) {
	t.Parallel()
	const (
		workers  = 16
		maxCalls = 2000
		budget   = 2500 * time.Millisecond
		fastRTT  = 50 * time.Millisecond
		slowRTT  = 10 * fastRTT
	)
	cases := []struct {
		lb       string
		min, max float64 // bounds of the slow backend's share
	}{
		{"least_request", 0, 0.15},
		{"peak_ewma", 0, 0.15},
		{"round_robin", 0.30, 0.37}, // control: blind to latency
	}
	for _, tc := range cases {
		t.Run(tc.lb, func(t *testing.T) {
			t.Parallel()
			slow := startBackends(t, "slow", 1, withLatency(slowRTT))
			fast := startBackends(t, "fast", 2, withLatency(fastRTT))
			bs := slices.Concat(fast, slow)
			_, client := startBalanced(t, balanceConfig(
				"  - {name: all, match: {prefix: /}, cluster: skew}",
				fmt.Sprintf("  - {name: skew, lb: %s, endpoints: %s}", tc.lb, addrs(bs))),
				map[string][]*backend.Backend{"skew": bs})
			names := make([]string, maxCalls)
			start := time.Now()
			done, err := fanOut(maxCalls, workers, start.Add(budget), func(i int) error {
				var err error
				names[i], err = answeredBy(client)
				return err
			})
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if done < 100 {
				t.Fatalf("only %d calls in %v; too few to judge", done, budget)
			}
			c := tally(names)
			share := float64(c[slow[0].Name]) / float64(done)
			t.Logf("%s: slow backend (%v) got %d of %d calls = %.1f%% (even share 33.3%%), fast (%v) %d+%d, in %v",
				tc.lb, slowRTT, c[slow[0].Name], done, 100*share, fastRTT, c[fast[0].Name], c[fast[1].Name], took.Round(time.Millisecond))
			if share < tc.min || share > tc.max {
				t.Errorf("%s: slow backend's share %.1f%%, want in [%.0f%%, %.0f%%]", tc.lb, 100*share, 100*tc.min, 100*tc.max)
			}
		})
	}
}

// ringConfig is a ring_hash cluster over bs keyed by x-user.
func ringConfig(bs []*backend.Backend) string {
	return balanceConfig(
		"  - {name: all, match: {prefix: /}, cluster: ring}",
		"  - {name: ring, lb: ring_hash, hash_header: x-user, endpoints: "+addrs(bs)+"}")
}

// TestBalanceRingHash: a key always lands on the same backend, and when a
// reload removes one of 5 backends only that backend's keys (about a
// fifth) move. The reload changes the cluster's endpoint list, so meshd
// builds the cluster anew: the ring must come out the same for the same
// endpoints whatever order their health checks admitted them in, or the
// keys of the backends that stayed move too.
func TestBalanceRingHash(t *testing.T) {
	t.Parallel()
	const (
		keys     = 10000
		repeated = 200 // keys probed 3 more times for stickiness
	)
	key := func(i int) string { return fmt.Sprintf("user-%d", i) }
	bs := startBackends(t, "ring", 5)
	m, client := startBalanced(t, ringConfig(bs), map[string][]*backend.Backend{"ring": bs})

	probe := func(what string) []string {
		t.Helper()
		got := make([]string, keys)
		mustFanOut(t, keys, balanceWorkers, 90*time.Second, func(i int) error {
			var err error
			got[i], err = answeredBy(client, "x-user", key(i))
			return err
		})
		c := tally(got)
		names := make([]string, 0, len(c))
		for n := range c {
			names = append(names, n)
		}
		slices.Sort(names)
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, " %s=%.1f%%", n, 100*float64(c[n])/keys)
		}
		t.Logf("%d keys %s:%s", keys, what, b.String())
		return got
	}
	before := probe("over 5 backends")

	// Stickiness: the same key, asked again, finds the same backend.
	again := make([]string, 3*repeated)
	mustFanOut(t, len(again), balanceWorkers, 30*time.Second, func(i int) error {
		var err error
		again[i], err = answeredBy(client, "x-user", key(i%repeated))
		return err
	})
	for i, b := range again {
		if k := i % repeated; b != before[k] {
			t.Errorf("key %s went to %s, earlier to %s", key(k), b, before[k])
		}
	}
	if c := tally(before); len(c) != len(bs) {
		t.Fatalf("keys landed on %d backends, want %d: %v", len(c), len(bs), c)
	}

	removed := bs[2]
	rest := slices.Delete(slices.Clone(bs), 2, 3)
	cfg, err := config.Parse([]byte(ringConfig(rest)), "ring.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for _, b := range rest {
		waitState(t, m.Admin, "ring", b.Addr, "serving")
	}
	after := probe("over 4 backends, " + removed.Name + " removed")

	var moved, movedOther, ofRemoved int
	for i := range keys {
		if before[i] == removed.Name {
			ofRemoved++
		}
		if after[i] == removed.Name {
			t.Fatalf("key %s still went to the removed %s", key(i), removed.Name)
		}
		if after[i] != before[i] {
			moved++
			if before[i] != removed.Name {
				movedOther++
			}
		}
	}
	frac := float64(moved) / keys
	t.Logf("removing %s moved %d of %d keys (%.3f); it held %d; %d keys of other backends moved",
		removed.Name, moved, keys, frac, ofRemoved, movedOther)
	if frac < 0.12 || frac > 0.30 {
		t.Errorf("moved fraction %.3f, want in [0.12, 0.30]", frac)
	}
	if movedOther != 0 {
		t.Errorf("%d keys of backends that stayed moved; only the %d keys of %s should have", movedOther, ofRemoved, removed.Name)
	}
}

// TestBalanceSplit: a 90/10 route split holds within ±3 points over 5,000
// calls; a route before it matching x-canary: "1" sends every call to the
// canary, and calls with another x-canary value fall through to the split.
func TestBalanceSplit(t *testing.T) {
	t.Parallel()
	primary := startBackends(t, "main", 2)
	canary := startBackends(t, "canary", 1)
	_, client := startBalanced(t, balanceConfig(`
  - name: forced-canary
    match: {prefix: /, headers: [{name: x-canary, exact: "1"}]}
    cluster: canary
  - name: split
    match: {prefix: /}
    clusters: [{name: main, weight: 90}, {name: canary, weight: 10}]`,
		"  - {name: main, endpoints: "+addrs(primary)+"}\n  - {name: canary, endpoints: "+addrs(canary)+"}"),
		map[string][]*backend.Backend{"main": primary, "canary": canary})

	cases := []struct {
		name string
		md   []string
		n    int
		want float64 // canary share, percent
		tol  float64 // points
	}{
		{"split without header", nil, 5000, 10, 3},
		{"x-canary 1 forces canary", []string{"x-canary", "1"}, 500, 100, 0},
		// 1,000 calls: ±4 points is over 4 standard deviations.
		{"x-canary 0 falls through to split", []string{"x-canary", "0"}, 1000, 10, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			names := make([]string, tc.n)
			mustFanOut(t, tc.n, balanceWorkers/2, 60*time.Second, func(i int) error {
				var err error
				names[i], err = answeredBy(client, tc.md...)
				return err
			})
			var toCanary, toMain int
			for _, n := range names {
				switch {
				case strings.HasPrefix(n, "canary-"):
					toCanary++
				case strings.HasPrefix(n, "main-"):
					toMain++
				default:
					t.Fatalf("answered by unknown backend %q", n)
				}
			}
			share := 100 * float64(toCanary) / float64(tc.n)
			t.Logf("%s: canary %d, main %d of %d calls: canary share %.1f%%", tc.name, toCanary, toMain, tc.n, share)
			if share < tc.want-tc.tol || share > tc.want+tc.tol {
				t.Errorf("canary share %.1f%%, want %.0f%%±%.0f", share, tc.want, tc.tol)
			}
		})
	}
}
