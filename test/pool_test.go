package test

import (
	"github.com/meshd/meshd/internal/testkit"

	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/consultest"
)

// connsTo returns the local ports of the ESTABLISHED TCP connections to
// port on this host, as the kernel lists them (/proc/net/tcp and tcp6):
// what `ss -tn state established dport = :port` shows, counted without a
// meshd counter's word for it.
func connsTo(t testing.TB, port int) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatalf("list TCP connections: %v", err)
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st ...; addresses are HEX_IP:HEX_PORT.
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "01" { // TCP_ESTABLISHED
				continue
			}
			rem := fs[2][strings.LastIndexByte(fs[2], ':')+1:]
			if p, err := strconv.ParseUint(rem, 16, 16); err == nil && int(p) == port {
				out[fs[1]] = true
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// portOf is the port of a backend address "127.0.0.1:PORT".
func portOf(t testing.TB, addr string) int {
	t.Helper()
	p, err := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestListenersShareClusterPool: a cluster's connections for calls belong
// to the cluster, not to each listener. With two listeners and one
// backend, meshd holds 1 health-watch connection plus ConnsPerBackend (2)
// call connections to it, however many listeners the calls come through:
// before, each listener's engine held its own 2 (1 + 2×2 = 5).
func TestListenersShareClusterPool(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "shared", 1)
	m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: a, address: 127.0.0.1:0}
  - {name: b, address: 127.0.0.2:0} # :0 twice is refused as a duplicate
routes:
  - {name: all, match: {prefix: /}, cluster: backends}
clusters:
  - name: backends
    endpoints: %s
`, addrs(bs)))
	port := portOf(t, bs[0].Addr)
	la := m.srv.ListenerAddrs()
	calls := func(addr string) {
		t.Helper()
		cc := dial(t, addr)
		waitServing(t, cc)
		c := testpb.NewTestServiceClient(cc)
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}})
			cancel()
			if err != nil {
				t.Fatalf("call via %s: %v", addr, err)
			}
		}
	}
	const want = 1 + 2 // the health watch, ConnsPerBackend
	calls(la["a"])
	testkit.WaitFor(t, 5*time.Second, "the cluster's connections", func() bool { return len(connsTo(t, port)) == want })
	before := connsTo(t, port)
	calls(la["b"])
	calls(la["a"])
	if after := connsTo(t, port); !maps.Equal(after, before) {
		t.Fatalf("connections to the backend after calls through a second listener: %d (%v), want the same %d as through one (%v)",
			len(after), slices.Sorted(maps.Keys(after)), len(before), slices.Sorted(maps.Keys(before)))
	}

	mt := scrapeMetrics(t, m.Admin).Samples()
	if got := mt[`meshd_cluster_upstream_connections{cluster="backends"}`]; got != 2 {
		t.Errorf(`meshd_cluster_upstream_connections{cluster="backends"} = %g, want 2`, got)
	}
	for series := range mt {
		if strings.HasPrefix(series, "meshd_frame_upstream_") {
			t.Errorf("%s: upstream connections are still reported per listener", series)
		}
	}
}

// TestRetiredClusterKeepsOthersConns is the regression test of "Forget(addr)
// on a retired cluster also closes another cluster's pooled connections to
// the same address": clusters a and b both have endpoint X; a reload drops
// a, which is retired and closes what is its own. b's connections to X
// stay open and keep carrying its calls, with no redial.
func TestRetiredClusterKeepsOthersConns(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "x", 1)
	gen := func(withA bool) string {
		routes, clusters := "", ""
		if withA {
			routes = `  - {name: to-a, match: {method: /grpc.testing.TestService/UnaryCall}, cluster: a}` + "\n"
			clusters = fmt.Sprintf("  - {name: a, endpoints: %s}\n", addrs(bs))
		}
		return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
%s  - {name: to-b, match: {prefix: /}, cluster: b}
clusters:
%s  - {name: b, endpoints: %s}
`, routes, clusters, addrs(bs))
	}
	m := startObserved(t, gen(true))
	port := portOf(t, bs[0].Addr)
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	c := testpb.NewTestServiceClient(cc)
	callB := func() {
		t.Helper()
		for range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.EmptyCall(ctx, &testpb.Empty{}) // route to-b
			cancel()
			if err != nil {
				t.Fatalf("call to cluster b: %v", err)
			}
		}
	}
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}) // route to-a
		cancel()
		if err != nil {
			t.Fatalf("call to cluster a: %v", err)
		}
	}
	callB()
	// Each cluster: its health watch and its 2 call connections.
	testkit.WaitFor(t, 5*time.Second, "both clusters' connections", func() bool { return len(connsTo(t, port)) == 2*(1+2) })
	before := connsTo(t, port)

	cfg, err := config.Parse([]byte(gen(false)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	// a is retired once no call can use it; its 3 connections close. Had
	// its retirement closed b's too, fewer than b's 3 would be left here.
	testkit.WaitFor(t, 10*time.Second, "the retired cluster's connections to close", func() bool { return len(connsTo(t, port)) <= 1+2 })
	callB()
	after := connsTo(t, port)
	for p := range after {
		if !before[p] {
			t.Fatalf("cluster b redialled the backend after cluster a was retired: connections %v, before %v",
				slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(before)))
		}
	}
	if len(after) != 1+2 {
		t.Fatalf("%d connections to the backend after a's retirement (%v), want b's 3", len(after), slices.Sorted(maps.Keys(after)))
	}
	mt := scrapeMetrics(t, m.Admin).Samples()
	if got := mt[`meshd_cluster_upstream_connections{cluster="b"}`]; got != 2 {
		t.Errorf(`meshd_cluster_upstream_connections{cluster="b"} = %g, want 2`, got)
	}
	if _, ok := mt[`meshd_cluster_upstream_connections{cluster="a"}`]; ok {
		t.Error("the retired cluster a is still reported")
	}
}

// testConsulRemovalKeepsOthersConns: the same bug on the other path, an
// endpoint removed from a running cluster. Cluster a (Consul) and cluster
// b (static) both have endpoint X; X is deregistered from a's service, a
// drains and closes its connections to X, and b's stay open and carry its
// calls with no redial.
func testConsulRemovalKeepsOthersConns(t *testing.T, agent *consultest.Agent) {
	svc := "poolowner"
	bs := startBackends(t, svc, 1)
	x := bs[0]
	registerBackend(t, agent, svc, x.Name, x)
	m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
consul: {address: %s}
routes:
  - {name: to-a, match: {method: /grpc.testing.TestService/UnaryCall}, cluster: a}
  - {name: to-b, match: {prefix: /}, cluster: b}
clusters:
  - {name: a, consul: {service: %s}}
  - {name: b, endpoints: [%s]}
`, agent.Addr, svc, x.Addr))
	waitState(t, m.Admin, "a", x.Addr, "serving")
	waitState(t, m.Admin, "b", x.Addr, "serving")
	port := portOf(t, x.Addr)
	c := testpb.NewTestServiceClient(dial(t, m.Addr))
	call := func(toA bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if toA {
			_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{})
		} else {
			_, err = c.EmptyCall(ctx, &testpb.Empty{})
		}
		if err != nil {
			t.Fatalf("call (to a: %v): %v", toA, err)
		}
	}
	for range 10 {
		call(true)
		call(false)
	}
	testkit.WaitFor(t, 5*time.Second, "both clusters' connections", func() bool { return len(connsTo(t, port)) == 2*(1+2) })
	before := connsTo(t, port)

	if err := agent.Client.Agent().ServiceDeregister(x.Name); err != nil {
		t.Fatal(err)
	}
	waitGone(t, m.Admin, "a", x.Addr)
	testkit.WaitFor(t, 10*time.Second, "cluster a's connections to X to close", func() bool { return len(connsTo(t, port)) <= 1+2 })
	for range 10 {
		call(false)
	}
	after := connsTo(t, port)
	for p := range after {
		if !before[p] {
			t.Fatalf("cluster b redialled X after a removed it: connections %v, before %v",
				slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(before)))
		}
	}
	if len(after) != 1+2 {
		t.Fatalf("%d connections to X after a removed it (%v), want b's 3", len(after), slices.Sorted(maps.Keys(after)))
	}
	mt := scrapeMetrics(t, m.Admin).Samples()
	if got := mt[`meshd_cluster_upstream_connections{cluster="a"}`]; got != 0 {
		t.Errorf(`meshd_cluster_upstream_connections{cluster="a"} = %g, want 0`, got)
	}
	if got := mt[`meshd_cluster_upstream_connections{cluster="b"}`]; got != 2 {
		t.Errorf(`meshd_cluster_upstream_connections{cluster="b"} = %g, want 2`, got)
	}
}
