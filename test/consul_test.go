package test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// consulConfig routes everything to one cluster whose section holds
// fields (e.g. "consul: {service: users}"), discovered through agent.
func consulConfig(agent, cluster, fields string) string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
consul: {address: %s}
routes:
  - name: all
    match: {prefix: /}
    cluster: %s
clusters:
  - name: %s
    %s
`, agent, cluster, cluster, fields)
}

// registration describes backend b as the instance id of service.
func registration(t testing.TB, service, id string, b *backend.Backend) *api.AgentServiceRegistration {
	t.Helper()
	host, port, err := net.SplitHostPort(b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return &api.AgentServiceRegistration{ID: id, Name: service, Address: host, Port: p}
}

// register registers reg and deregisters it when the test ends (ignoring
// errors: the test may have removed it or stopped the agent).
func register(t testing.TB, a *consultest.Agent, reg *api.AgentServiceRegistration) {
	t.Helper()
	a.Register(t, reg)
	t.Cleanup(func() { _ = a.Client.Agent().ServiceDeregister(reg.ID) })
}

// registerBackend registers b as the instance id of service.
func registerBackend(t testing.TB, a *consultest.Agent, service, id string, b *backend.Backend) {
	t.Helper()
	register(t, a, registration(t, service, id, b))
}

// waitGone waits until cluster has no live endpoint at addr and returns
// when that was seen.
func waitGone(t testing.TB, admin, cluster, addr string) time.Time {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, addr+" to leave "+cluster, func() bool {
		_, ok := endpointAt(t, admin, cluster, addr)
		return !ok
	})
	return time.Now()
}

// TestConsul runs meshd against a real Consul agent: one agent shared by
// the cases that leave it running, a private one for those that kill it.
func TestConsul(t *testing.T) {
	t.Parallel()
	shared := consultest.Start(t)
	for _, tc := range consulCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, shared)
		})
	}
}

// consulCases share one agent, so each registers a service of its own name.
var consulCases = []struct {
	name string
	run  func(t *testing.T, shared *consultest.Agent)
}{
	{"membership under load", testConsulMembership},
	{"ttl check critical", testConsulTTL},
	{"filters and empty service", testConsulFilters},
	{"agent lost", testConsulAgentLost},
	{"unreachable at start", testConsulUnreachableAtStart},
	{"endpoint removal keeps other clusters' connections", testConsulRemovalKeepsOthersConns}, // pool_test.go
}

// testConsulMembership: three instances share the traffic; a deregistered
// one stops taking calls within a second, with no call failing; a new one
// takes calls within a second.
func testConsulMembership(t *testing.T, agent *consultest.Agent) {
	svc := "members"
	bs := startBackends(t, svc, 4)
	for _, b := range bs[:3] {
		registerBackend(t, agent, svc, b.Name, b)
	}
	m := startMesh(t, consulConfig(agent.Addr, "members", "consul: {service: "+svc+"}"))
	for _, b := range bs[:3] {
		waitState(t, m.Admin, "members", b.Addr, "serving")
	}
	l := loadThrough(t, m)

	// All three take a fair share.
	l.waitTraffic(t, 100, bs[:3]...)
	counts := l.load.Counts()
	total := counts[bs[0].Name] + counts[bs[1].Name] + counts[bs[2].Name]
	for _, b := range bs[:3] {
		if counts[b.Name]*6 < total {
			t.Errorf("%s took %d of %d calls, want about a third", b.Name, counts[b.Name], total)
		}
	}
	t.Logf("spread over 3 instances: %v", counts)

	// Deregistration: out of traffic within a second.
	gone := bs[1]
	agent.Deregister(t, gone.Name)
	dereg := time.Now()
	left := waitGone(t, m.Admin, "members", gone.Addr)
	l.waitPast(t, dereg.Add(1200*time.Millisecond))
	last := l.load.Last(gone.Name).Sub(dereg)
	t.Logf("deregistered: left /clusters after %v; its last call started %v after Deregister returned",
		left.Sub(dereg).Round(time.Millisecond), last.Round(time.Millisecond))
	if n := l.load.CountAfter(gone.Name, dereg.Add(time.Second)); n > 0 {
		t.Errorf("%s took %d calls started more than 1s after its deregistration (last %v after)", gone.Name, n, last)
	}

	// Registration: in traffic within a second.
	fourth := bs[3]
	reg := time.Now()
	registerBackend(t, agent, svc, fourth.Name, fourth)
	var first, listed time.Time
	l.waitLoad(t, 10*time.Second, fourth.Name+" to take traffic", func() bool {
		if _, ok := endpointAt(t, m.Admin, "members", fourth.Addr); ok && listed.IsZero() {
			listed = time.Now()
		}
		var ok bool
		first, ok = l.load.FirstAfter(fourth.Name, reg)
		return ok
	})
	if listed.IsZero() {
		listed = time.Now()
	}
	t.Logf("registered: listed in /clusters after %v (polled), first call after %v",
		listed.Sub(reg).Round(time.Millisecond), first.Sub(reg).Round(time.Millisecond))
	if d := first.Sub(reg); d >= time.Second {
		t.Errorf("%s took its first call %v after registration, want < 1s", fourth.Name, d)
	}

	if fs := l.finish(); len(fs) > 0 {
		t.Errorf("%d of %d calls failed, want none:\n%s", len(fs), l.load.Total(), describeFailures(fs, dereg))
	}
}

// testConsulTTL: an instance whose TTL check goes critical leaves traffic
// (passing_only defaults to true) and comes back when it passes again.
func testConsulTTL(t *testing.T, agent *consultest.Agent) {
	svc := "ttl"
	bs := startBackends(t, svc, 2)
	registerBackend(t, agent, svc, bs[0].Name, bs[0])
	checked := bs[1]
	checkID := svc + "-check"
	reg := registration(t, svc, checked.Name, checked)
	reg.Check = &api.AgentServiceCheck{CheckID: checkID, TTL: "30s"}
	register(t, agent, reg)
	agent.SetTTL(t, checkID, api.HealthPassing)

	m := startMesh(t, consulConfig(agent.Addr, "ttl", "consul: {service: "+svc+"}"))
	for _, b := range bs {
		waitState(t, m.Admin, "ttl", b.Addr, "serving")
	}
	l := loadThrough(t, m)
	l.waitTraffic(t, 20, bs...)

	critical := time.Now()
	agent.SetTTL(t, checkID, api.HealthCritical)
	left := waitGone(t, m.Admin, "ttl", checked.Addr)
	l.waitPast(t, left.Add(200*time.Millisecond))
	t.Logf("TTL critical: left /clusters after %v; last call started %v after",
		left.Sub(critical).Round(time.Millisecond), l.load.Last(checked.Name).Sub(critical).Round(time.Millisecond))
	if d := left.Sub(critical); d >= time.Second {
		t.Errorf("critical instance left after %v, want < 1s", d)
	}
	if n := l.load.CountAfter(checked.Name, left); n > 0 {
		t.Errorf("critical instance took %d calls after it left", n)
	}

	passing := time.Now()
	agent.SetTTL(t, checkID, api.HealthPassing)
	testkit.WaitFor(t, 10*time.Second, "the instance to take traffic again", func() bool {
		_, ok := l.load.FirstAfter(checked.Name, passing)
		return ok
	})
	if fs := l.finish(); len(fs) > 0 {
		t.Errorf("%d of %d calls failed, want none:\n%s", len(fs), l.load.Total(), describeFailures(fs, critical))
	}
}

// testConsulFilters: a tag filter keeps only tagged instances; datacenter
// dc1 (the agent's) works, dc2 (unknown) never yields endpoints and keeps
// /ready failing; a service without instances answers UNAVAILABLE.
func testConsulFilters(t *testing.T, agent *consultest.Agent) {
	svc := "filter"
	tagged := startBackends(t, svc+"-tagged", 1)[0]
	plain := startBackends(t, svc+"-plain", 1)[0]
	reg := registration(t, svc, tagged.Name, tagged)
	reg.Tags = []string{"grpc"}
	register(t, agent, reg)
	registerBackend(t, agent, svc, plain.Name, plain)

	var routes, clusters strings.Builder
	for _, c := range []struct{ name, consul string }{
		{"tagged-only", fmt.Sprintf("{service: %s, tag: grpc}", svc)},
		{"in-dc1", fmt.Sprintf("{service: %s, datacenter: dc1}", svc)},
		{"in-dc2", fmt.Sprintf("{service: %s, datacenter: dc2}", svc)},
		{"no-instances", fmt.Sprintf("{service: %s-nobody}", svc)},
	} {
		fmt.Fprintf(&routes, "  - {name: %s, match: {prefix: /, headers: [{name: x-route, exact: %s}]}, cluster: %s}\n", c.name, c.name, c.name)
		fmt.Fprintf(&clusters, "  - {name: %s, consul: %s}\n", c.name, c.consul)
	}
	m := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
consul: {address: %s}
routes:
%sclusters:
%s`, agent.Addr, routes.String(), clusters.String()))
	client := testpb.NewTestServiceClient(dial(t, m.Addr))
	call := func(route string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var hdr metadata.MD
		_, err := client.EmptyCall(metadata.AppendToOutgoingContext(ctx, "x-route", route), &testpb.Empty{}, grpc.Header(&hdr))
		return backendOf(hdr, nil), err
	}
	// seen calls route n times and counts the answering backends.
	seen := func(t *testing.T, route string, n int) map[string]int {
		t.Helper()
		out := map[string]int{}
		for range n {
			b, err := call(route)
			if err != nil {
				t.Fatalf("route %s: %v", route, err)
			}
			out[b]++
		}
		return out
	}

	t.Run("tag", func(t *testing.T) {
		waitState(t, m.Admin, "tagged-only", tagged.Addr, "serving")
		if got := seen(t, "tagged-only", 30); got[tagged.Name] != 30 {
			t.Errorf("tag filter: answers %v, want all from %s", got, tagged.Name)
		}
		if cv := clustersOf(t, m.Admin)["tagged-only"]; cv.Status.Total != 1 {
			t.Errorf("tag filter: %d endpoints, want 1: %+v", cv.Status.Total, cv.Status.Endpoints)
		}
	})
	t.Run("dc1", func(t *testing.T) {
		waitState(t, m.Admin, "in-dc1", tagged.Addr, "serving")
		waitState(t, m.Admin, "in-dc1", plain.Addr, "serving")
		if got := seen(t, "in-dc1", 30); got[tagged.Name] == 0 || got[plain.Name] == 0 {
			t.Errorf("datacenter dc1: answers %v, want both instances", got)
		}
	})
	t.Run("dc2", func(t *testing.T) {
		var cv clusterView
		testkit.WaitFor(t, 10*time.Second, "the dc2 query to fail", func() bool {
			cv = clustersOf(t, m.Admin)["in-dc2"]
			return cv.Discovery != nil && cv.Discovery.LastError != ""
		})
		t.Logf("dc2 discovery: %+v", *cv.Discovery)
		if cv.Status.Ready || cv.Status.Total != 0 || cv.Discovery.Synced || cv.Discovery.Healthy {
			t.Errorf("dc2 cluster: %+v %+v, want not ready, no endpoints", cv.Status, *cv.Discovery)
		}
		_, err := call("in-dc2")
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), `"in-dc2"`) {
			t.Errorf("call to dc2 cluster: %v, want UNAVAILABLE naming the cluster", err)
		}
		// The other clusters sync; the dc2 one keeps meshd unready.
		var code int
		var body string
		testkit.WaitFor(t, 10*time.Second, "/ready to blame in-dc2", func() bool {
			code, body = adminGet(t, m.Admin, "/ready")
			return strings.Contains(body, `"in-dc2"`)
		})
		if code != 503 || !strings.Contains(body, "No path to datacenter") {
			t.Errorf("/ready: %d %q, want 503 naming the cluster and the Consul error", code, body)
		}
		t.Logf("/ready: %d %s", code, strings.TrimSpace(body))
	})
	t.Run("no instances", func(t *testing.T) {
		testkit.WaitFor(t, 10*time.Second, "the empty cluster to sync", func() bool {
			return clustersOf(t, m.Admin)["no-instances"].Status.Ready
		})
		_, err := call("no-instances")
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), `"no-instances"`) {
			t.Errorf("call to empty cluster: %v, want UNAVAILABLE naming the cluster", err)
		}
		t.Logf("empty service: %v", err)
	})
}

// testConsulAgentLost: with the agent killed, meshd keeps the last known
// endpoints (stale beats empty), stays ready and says discovery is failing;
// once the agent is back, empty until re-registration, no call fails and
// tracking resumes.
func testConsulAgentLost(t *testing.T, _ *consultest.Agent) {
	agent := consultest.Start(t)
	svc := "lost"
	bs := startBackends(t, svc, 3)
	for _, b := range bs[:2] {
		registerBackend(t, agent, svc, b.Name, b)
	}
	m := startMesh(t, consulConfig(agent.Addr, "lost", "consul: {service: "+svc+"}"))
	for _, b := range bs[:2] {
		waitState(t, m.Admin, "lost", b.Addr, "serving")
	}
	l := loadThrough(t, m)
	l.waitTraffic(t, 20, bs[:2]...)

	agent.Stop(t)
	var cv clusterView
	testkit.WaitFor(t, 10*time.Second, "discovery to report the lost agent", func() bool {
		cv = clustersOf(t, m.Admin)["lost"]
		return cv.Discovery != nil && !cv.Discovery.Healthy && cv.Discovery.LastError != ""
	})
	failingSeen := time.Now()
	t.Logf("agent down: discovery %+v", *cv.Discovery)
	if code, body := adminGet(t, m.Admin, "/ready"); code != 200 {
		t.Errorf("/ready with the agent down: %d %s, want 200 (last known endpoints serve)", code, body)
	}
	if cv.Status.Healthy != 2 {
		t.Errorf("cluster with the agent down: %+v, want the 2 known endpoints serving", cv.Status)
	}
	for _, b := range bs[:2] {
		testkit.WaitFor(t, 10*time.Second, b.Name+" to keep taking traffic", func() bool {
			return l.load.CountAfter(b.Name, failingSeen) >= 20
		})
	}
	if fs := l.load.Failures(); len(fs) > 0 {
		t.Errorf("%d calls failed with the agent down, want none:\n%s", len(fs), describeFailures(fs, failingSeen))
	}
	if code, body := adminGet(t, m.Admin, "/ready"); code != 200 {
		t.Errorf("/ready after %v with the agent down: %d %s, want 200", time.Since(failingSeen).Round(time.Millisecond), code, body)
	}

	// The dev agent comes back empty: register again, plus a newcomer.
	agent.Restart(t)
	restarted := time.Now()
	for _, b := range bs {
		registerBackend(t, agent, svc, b.Name, b)
	}
	var first time.Time
	testkit.WaitFor(t, 20*time.Second, "the newcomer to take traffic", func() bool {
		var ok bool
		first, ok = l.load.FirstAfter(bs[2].Name, restarted)
		return ok
	})
	testkit.WaitFor(t, 10*time.Second, "discovery to recover", func() bool {
		d := clustersOf(t, m.Admin)["lost"].Discovery
		return d != nil && d.Healthy && d.LastError == ""
	})
	fs := l.finish()
	t.Logf("agent back: newcomer's first call %v after the restart; %d calls failed", first.Sub(restarted).Round(time.Millisecond), len(fs))
	// The restarted dev agent answers "no instances" until the
	// re-registration lands; discovery holds that answer back.
	if len(fs) > 0 {
		t.Errorf("%d calls failed across the agent's restart, want none:\n%s", len(fs), describeFailures(fs, restarted))
	}
}

// testConsulUnreachableAtStart: meshd starts without Consul, is not ready
// and says which cluster waits; once Consul is up with the service, it
// becomes ready and serves.
func testConsulUnreachableAtStart(t *testing.T, _ *consultest.Agent) {
	agent := consultest.Start(t)
	agent.Stop(t)
	svc := "late"
	bs := startBackends(t, svc, 1)
	m := startMesh(t, consulConfig(agent.Addr, "late", "consul: {service: "+svc+"}"))
	cc := dial(t, m.Addr)

	var code int
	var body string
	testkit.WaitFor(t, 10*time.Second, "/ready to explain", func() bool {
		code, body = adminGet(t, m.Admin, "/ready")
		return code == 503 && strings.Contains(body, "discovery: consul query")
	})
	t.Logf("/ready without Consul: %d %s", code, strings.TrimSpace(body))
	if !strings.Contains(body, `cluster "late"`) {
		t.Errorf("/ready: %q, want it to name cluster late", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := testpb.NewTestServiceClient(cc).EmptyCall(ctx, &testpb.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), `"late"`) {
		t.Errorf("call without Consul: %v, want UNAVAILABLE naming the cluster", err)
	}

	agent.Restart(t)
	restarted := time.Now()
	registerBackend(t, agent, svc, bs[0].Name, bs[0])
	testkit.WaitFor(t, 20*time.Second, "/ready to pass", func() bool {
		code, _ := adminGet(t, m.Admin, "/ready")
		return code == 200
	})
	t.Logf("ready %v after the agent came back", time.Since(restarted).Round(time.Millisecond))
	waitServing(t, cc)
}
