package discovery_test

import (
	"bytes"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
)

// Short waits keep a test's idle blocking queries from outliving it by
// minutes; short backoff keeps outage tests fast.
var fastOpts = []discovery.ConsulOption{
	discovery.WithWaitTime(2 * time.Second),
	discovery.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
}

const node = consultest.NodeName

// instance describes one registration and the endpoint meshd should see.
type instance struct {
	id, name, addr string
	port, weight   int
	tags           []string
	meta           map[string]string
	ttl            bool // add a TTL check named id+":ttl", initially passing
}

func (in instance) register(t *testing.T, a *consultest.Agent) {
	t.Helper()
	reg := &api.AgentServiceRegistration{
		ID: in.id, Name: in.name, Address: in.addr, Port: in.port, Tags: in.tags, Meta: in.meta,
	}
	if in.weight > 0 {
		reg.Weights = &api.AgentWeights{Passing: in.weight, Warning: 1}
	}
	if in.ttl {
		reg.Check = &api.AgentServiceCheck{CheckID: in.id + ":ttl", TTL: "10m", Status: api.HealthPassing}
	}
	a.Register(t, reg)
	// Leave the shared agent clean for -count > 1. Errors are moot: the
	// test may have deregistered it or stopped the agent.
	t.Cleanup(func() { _ = a.Client.Agent().ServiceDeregister(in.id) })
}

func (in instance) endpoint() discovery.Endpoint {
	host := in.addr
	if host == "" {
		host = "127.0.0.1" // the dev agent's node address
	}
	w := uint32(1)
	if in.weight > 0 {
		w = uint32(in.weight)
	}
	return discovery.Endpoint{
		ID:      node + "/" + in.id,
		Address: net.JoinHostPort(host, strconv.Itoa(in.port)),
		Weight:  w,
		Tags:    in.tags,
		Meta:    in.meta,
	}
}

func endpoints(ins ...instance) []discovery.Endpoint {
	out := []discovery.Endpoint{}
	for _, in := range ins {
		out = append(out, in.endpoint())
	}
	return out
}

// waitIndex returns once the resolver has handled Consul's current state of
// the query: it reads the index a plain query reports now and polls until
// the resolver's Status reaches it. Because the resolver records an index
// only after delivering that result's snapshot (if any), a test may then
// check that no snapshot was sent.
func waitIndex(t *testing.T, a *consultest.Agent, c *discovery.Consul, q discovery.ConsulQuery) {
	t.Helper()
	_, meta, err := a.Client.Health().Service(q.Service, q.Tag, q.PassingOnly, &api.QueryOptions{Datacenter: q.Datacenter})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, "caught up", func(st discovery.WatchStatus) bool { return st.Index >= meta.LastIndex })
}

// waitCatalog polls until the catalog lists want instances of service
// (agent registrations reach the catalog asynchronously).
func waitCatalog(t *testing.T, a *consultest.Agent, service string, want int) {
	t.Helper()
	var (
		entries []*api.ServiceEntry
		err     error
	)
	if !testkit.Poll(10*time.Second, 5*time.Millisecond, func() bool {
		entries, _, err = a.Client.Health().Service(service, "", false, nil)
		return err == nil && len(entries) == want
	}) {
		t.Fatalf("catalog: want %d instances of %s, have %d (%v)", want, service, len(entries), err)
	}
}

func TestConsulTracksInstances(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	u1 := instance{id: "users-1", name: "users", addr: "127.0.0.2", port: 9001, weight: 3,
		tags: []string{"grpc", "v1"}, meta: map[string]string{"zone": "a"}}
	u2 := instance{id: "users-2", name: "users", addr: "127.0.0.3", port: 9002, tags: []string{"grpc"}}
	u3 := instance{id: "users-3", name: "users", port: 9003} // node address
	u4 := instance{id: "users-4", name: "users", addr: "::1", port: 9004, weight: 7}
	for _, in := range []instance{u1, u2, u3} {
		in.register(t, a)
	}
	waitCatalog(t, a, "users", 3)

	c := discovery.NewConsul(a.Client, discovery.ConsulQuery{Service: "users", PassingOnly: true}, fastOpts...)
	w := startWatch(t, c)
	w.expect(5*time.Second, endpoints(u1, u2, u3))
	// Status is recorded right after the snapshot is delivered.
	if st := waitStatus(t, c, "synced", func(st discovery.WatchStatus) bool { return st.Synced }); !st.Healthy || st.LastError != "" || st.Index == 0 || st.LastSuccess.IsZero() {
		t.Fatalf("status after first snapshot: %+v", st)
	}

	a.Deregister(t, u2.id)
	w.expect(time.Second, endpoints(u1, u3))

	u4.register(t, a)
	w.expect(time.Second, endpoints(u1, u3, u4))
	if got := endpoints(u4)[0].Address; got != "[::1]:9004" {
		t.Fatalf("IPv6 address joined as %q", got)
	}
}

func TestConsulHealthFilter(t *testing.T) {
	t.Parallel()
	for _, passingOnly := range []bool{true, false} {
		name := "ttl-all"
		if passingOnly {
			name = "ttl-passing"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a := sharedAgent(t)
			i1 := instance{id: name + "-1", name: name, addr: "127.0.0.1", port: 9101, ttl: true}
			i2 := instance{id: name + "-2", name: name, addr: "127.0.0.1", port: 9102, ttl: true}
			i1.register(t, a)
			i2.register(t, a)
			waitCatalog(t, a, name, 2)

			q := discovery.ConsulQuery{Service: name, PassingOnly: passingOnly}
			c := discovery.NewConsul(a.Client, q, fastOpts...)
			w := startWatch(t, c)
			w.expect(5*time.Second, endpoints(i1, i2))

			a.SetTTL(t, i2.id+":ttl", api.HealthCritical)
			if passingOnly {
				w.expect(time.Second, endpoints(i1))
			} else {
				// The check change moves the index; the instances, as
				// meshd sees them, did not change.
				waitIndex(t, a, c, q)
				w.none()
			}

			a.SetTTL(t, i2.id+":ttl", api.HealthPassing)
			if passingOnly {
				w.expect(time.Second, endpoints(i1, i2))
			} else {
				waitIndex(t, a, c, q)
				w.none()
			}
		})
	}
}

// TestConsulUnchangedNotResent moves the service's index without changing
// the tag-filtered payload, and registers an unrelated service: neither may
// produce a snapshot, and a real change afterwards still does.
func TestConsulUnchangedNotResent(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	g1 := instance{id: "tagged-1", name: "tagged", addr: "127.0.0.1", port: 9201, tags: []string{"grpc"}}
	h1 := instance{id: "tagged-2", name: "tagged", addr: "127.0.0.1", port: 9202, tags: []string{"http"}}
	g1.register(t, a)
	h1.register(t, a)
	waitCatalog(t, a, "tagged", 2)

	q := discovery.ConsulQuery{Service: "tagged", Tag: "grpc", PassingOnly: true}
	c := discovery.NewConsul(a.Client, q, fastOpts...)
	w := startWatch(t, c)
	w.expect(5*time.Second, endpoints(g1))
	before := c.Status().Index

	// Another instance with the other tag: the index moves, the answer to
	// the tag query does not.
	h2 := instance{id: "tagged-3", name: "tagged", addr: "127.0.0.1", port: 9203, tags: []string{"http"}}
	h2.register(t, a)
	waitCatalog(t, a, "tagged", 3)
	waitIndex(t, a, c, q)
	if after := c.Status().Index; after <= before {
		t.Fatalf("index did not move (%d → %d): the test proves nothing", before, after)
	}
	w.none()

	// An unrelated service.
	(instance{id: "unrelated-1", name: "unrelated", addr: "127.0.0.1", port: 9299}).register(t, a)
	waitCatalog(t, a, "unrelated", 1)
	waitIndex(t, a, c, q)
	w.none()

	g2 := instance{id: "tagged-4", name: "tagged", addr: "127.0.0.1", port: 9204, tags: []string{"grpc", "canary"}}
	g2.register(t, a)
	w.expect(time.Second, endpoints(g1, g2))
}

func TestConsulEmptyService(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	c := discovery.NewConsul(a.Client, discovery.ConsulQuery{Service: "nobody", PassingOnly: true}, fastOpts...)
	w := startWatch(t, c)
	got := w.next(5 * time.Second)
	if got == nil || len(got) != 0 {
		t.Fatalf("want an empty, non-nil snapshot, got %#v", got)
	}
	if st := waitStatus(t, c, "synced", func(st discovery.WatchStatus) bool { return st.Synced }); !st.Healthy {
		t.Fatalf("status: %+v", st)
	}

	// And the first instance to appear is sent.
	n1 := instance{id: "nobody-1", name: "nobody", addr: "127.0.0.1", port: 9301}
	n1.register(t, a)
	w.expect(time.Second, endpoints(n1))
}

func TestConsulDatacenter(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	d1 := instance{id: "dc-users-1", name: "dc-users", addr: "127.0.0.1", port: 9401}
	d1.register(t, a)
	waitCatalog(t, a, "dc-users", 1)

	t.Run("own datacenter", func(t *testing.T) {
		t.Parallel()
		q := discovery.ConsulQuery{Service: "dc-users", Datacenter: consultest.Datacenter, PassingOnly: true}
		w := startWatch(t, discovery.NewConsul(a.Client, q, fastOpts...))
		w.expect(5*time.Second, endpoints(d1))
	})
	t.Run("unknown datacenter", func(t *testing.T) {
		t.Parallel()
		q := discovery.ConsulQuery{Service: "dc-users", Datacenter: "dc2", PassingOnly: true}
		c := discovery.NewConsul(a.Client, q, fastOpts...)
		w := startWatch(t, c)
		// Several failures: the loop retries, and sends nothing meanwhile.
		st := waitStatus(t, c, "failing thrice", func(st discovery.WatchStatus) bool { return st.Failures >= 3 })
		if st.Synced || st.Healthy || !strings.Contains(st.LastError, "No path to datacenter") ||
			!strings.HasPrefix(st.LastError, `discovery: consul query service "dc-users": `) {
			t.Fatalf("status: %+v", st)
		}
		w.none()
	})
}

func TestConsulAgentLost(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	l1 := instance{id: "lost-1", name: "lost", addr: "127.0.0.1", port: 9501}
	l2 := instance{id: "lost-2", name: "lost", addr: "127.0.0.1", port: 9502}
	l1.register(t, a)
	l2.register(t, a)
	waitCatalog(t, a, "lost", 2)

	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := append([]discovery.ConsulOption{discovery.WithLogger(logger)}, fastOpts...)
	c := discovery.NewConsul(a.Client, discovery.ConsulQuery{Service: "lost", PassingOnly: true}, opts...)
	w := startWatch(t, c)
	w.expect(5*time.Second, endpoints(l1, l2))

	a.Stop(t)
	stopped := time.Now()
	st := waitStatus(t, c, "failing thrice", func(st discovery.WatchStatus) bool { return st.Failures >= 3 })
	if st.Healthy || !strings.Contains(st.LastError, "connection refused") || !st.Synced ||
		st.LastSuccess.IsZero() || st.LastSuccess.After(stopped) {
		t.Fatalf("status while Consul is down: %+v", st)
	}
	// Failures only grow without a success, and a snapshot only comes with
	// one: the last snapshot stands, no empty one was sent.
	w.none()

	// Consul comes back empty-handed (dev mode forgets): that answer, right
	// after an outage, is held back and the last snapshot kept.
	a.Restart(t)
	waitStatus(t, c, "holding the last snapshot", func(st discovery.WatchStatus) bool { return st.Healthy && st.Holding })
	w.none()
	// Tracking resumes with the instances registered again.
	l3 := instance{id: "lost-3", name: "lost", addr: "127.0.0.1", port: 9503}
	l1.register(t, a)
	l3.register(t, a)
	want := endpoints(l1, l3)
	deadline := time.After(10 * time.Second)
	for {
		var got []discovery.Endpoint
		select {
		case got = <-w.updates:
		case <-deadline:
			t.Fatalf("tracking did not resume; status %+v", c.Status())
		}
		if reflect.DeepEqual(got, want) {
			break
		}
	}
	// The status is recorded after the snapshot is delivered (consul.go),
	// so it may still say Holding for a moment after the snapshot arrived.
	if st := waitStatus(t, c, "healthy, not holding", func(st discovery.WatchStatus) bool { return st.Healthy && !st.Holding }); st.LastError != "" || st.Failures != 0 {
		t.Fatalf("status after recovery: %+v", st)
	}
	// Logged once per transition, not per retry.
	out := logs.String()
	if n := strings.Count(out, "consul query failing"); n != 1 {
		t.Errorf("failing logged %d times:\n%s", n, out)
	}
	if n := strings.Count(out, "consul query recovered"); n != 1 {
		t.Errorf("recovery logged %d times:\n%s", n, out)
	}
	if n := strings.Count(out, "hold ended"); n != 1 {
		t.Errorf("end of the hold logged %d times:\n%s", n, out)
	}
	if !strings.Contains(out, "component=discovery service=lost") {
		t.Errorf("log lacks component/service:\n%s", out)
	}
}

// TestConsulEmptyHold: an empty answer is applied at once when Consul did
// not fail before it (a service scaled to zero), and after the hold when
// it follows an outage and nothing is registered again.
func TestConsulEmptyHold(t *testing.T) {
	t.Parallel()
	t.Run("no outage: applied at once", func(t *testing.T) {
		t.Parallel()
		a := consultest.Start(t)
		in := instance{id: "zero-1", name: "zero", addr: "127.0.0.1", port: 9511}
		in.register(t, a)
		waitCatalog(t, a, "zero", 1)
		c := discovery.NewConsul(a.Client, discovery.ConsulQuery{Service: "zero", PassingOnly: true},
			append([]discovery.ConsulOption{discovery.WithEmptyHold(time.Hour)}, fastOpts...)...)
		w := startWatch(t, c)
		w.expect(5*time.Second, endpoints(in))
		if err := a.Client.Agent().ServiceDeregister(in.id); err != nil {
			t.Fatal(err)
		}
		w.expect(5*time.Second, endpoints())
		if st := c.Status(); st.Holding {
			t.Errorf("status %+v: holding without an outage", st)
		}
	})
	t.Run("after an outage: applied when the hold ends", func(t *testing.T) {
		t.Parallel()
		a := consultest.Start(t)
		in := instance{id: "gone-1", name: "gone", addr: "127.0.0.1", port: 9512}
		in.register(t, a)
		waitCatalog(t, a, "gone", 1)
		const hold = time.Second
		c := discovery.NewConsul(a.Client, discovery.ConsulQuery{Service: "gone", PassingOnly: true},
			append([]discovery.ConsulOption{discovery.WithEmptyHold(hold)}, fastOpts...)...)
		w := startWatch(t, c)
		w.expect(5*time.Second, endpoints(in))
		// Taken before the restart: the watch may reach the new agent
		// before Restart has seen it ready.
		restarted := time.Now()
		a.Restart(t)
		waitStatus(t, c, "holding", func(st discovery.WatchStatus) bool { return st.Holding })
		w.expect(10*time.Second, endpoints())
		if took := time.Since(restarted); took < hold {
			t.Errorf("the empty answer was applied %v after the restart, before the %v hold ended", took, hold)
		}
		if st := waitStatus(t, c, "done holding", func(st discovery.WatchStatus) bool { return !st.Holding }); !st.Healthy {
			t.Errorf("status after the hold: %+v", st)
		}
	})
}

// lockedBuffer is an io.Writer for a logger written by Watch's goroutine and
// read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConsulACL(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t, consultest.WithACLs("root-token"))
	s1 := instance{id: "secure-1", name: "secure", addr: "127.0.0.1", port: 9601}
	s1.register(t, a)
	waitCatalog(t, a, "secure", 1)
	q := discovery.ConsulQuery{Service: "secure", PassingOnly: true}

	t.Run("management token", func(t *testing.T) {
		t.Parallel()
		w := startWatch(t, discovery.NewConsul(a.Client, q, fastOpts...))
		w.expect(5*time.Second, endpoints(s1))
	})
	t.Run("unknown token", func(t *testing.T) {
		t.Parallel()
		client, err := discovery.NewConsulClient(a.Addr, "no-such-token")
		if err != nil {
			t.Fatal(err)
		}
		c := discovery.NewConsul(client, q, fastOpts...)
		w := startWatch(t, c)
		st := waitStatus(t, c, "failing", func(st discovery.WatchStatus) bool { return st.Failures >= 2 })
		if st.Healthy || st.Synced ||
			!strings.Contains(st.LastError, "permission denied (check CONSUL_HTTP_TOKEN / consul.token)") ||
			!strings.Contains(st.LastError, "ACL not found") {
			t.Fatalf("status: %+v", st)
		}
		w.none()
	})
	t.Run("anonymous token", func(t *testing.T) {
		t.Parallel()
		// With default_policy deny, Consul does not refuse an anonymous
		// read: it answers with the instances the token may see (none)
		// and says so in a header. That is an answer, so it is sent; the
		// loop logs the filtering.
		client, err := api.NewClient(&api.Config{Address: a.Addr})
		if err != nil {
			t.Fatal(err)
		}
		c := discovery.NewConsul(client, q, fastOpts...)
		w := startWatch(t, c)
		w.expect(5*time.Second, []discovery.Endpoint{})
		if st := waitStatus(t, c, "synced", func(st discovery.WatchStatus) bool { return st.Synced }); !st.Healthy {
			t.Fatalf("status: %+v", st)
		}
	})
}
