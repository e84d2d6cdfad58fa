package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/testkit"
)

// backend is a real gRPC server on 127.0.0.1 running grpc-go's health
// server.
type backend struct {
	addr   string
	srv    *grpc.Server
	health *health.Server
}

// startBackend starts a backend whose whole-server health is SERVING. With
// gate non-nil, Health/Watch answers only once gate is closed, which holds
// a new endpoint in "pending" for as long as the test wants.
func startBackend(t *testing.T, gate chan struct{}) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: lis.Addr().String(), srv: grpc.NewServer(), health: health.NewServer()}
	if gate != nil {
		healthpb.RegisterHealthServer(b.srv, gatedHealth{b.health, gate})
	} else {
		healthpb.RegisterHealthServer(b.srv, b.health)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = b.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		b.srv.Stop()
		<-served
	})
	return b
}

func (b *backend) endpoint() discovery.Endpoint {
	return discovery.Endpoint{ID: b.addr, Address: b.addr, Weight: 1}
}

func (b *backend) set(s healthpb.HealthCheckResponse_ServingStatus) {
	b.health.SetServingStatus("", s)
}

type gatedHealth struct {
	*health.Server
	gate chan struct{}
}

func (g gatedHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	select {
	case <-g.gate:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	return g.Server.Watch(req, stream)
}

// liveOptions are cluster options for tests against real backends: quick
// health-stream retries.
func liveOptions(name string) Options {
	return Options{
		Name:   name,
		Health: HealthOptions{BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
	}
}

// pickOnce picks and immediately reports success.
func pickOnce(t *testing.T, c *Cluster) (*Endpoint, error) {
	t.Helper()
	e, err := c.Pick(&PickInfo{Method: "/test.Svc/Call"})
	if err == nil {
		c.Done(e, time.Now(), codes.OK, false)
	}
	return e, err
}

// pickID picks until it gets endpoint id (bounded) and returns it still
// outstanding; other picks are reported done.
func pickID(t *testing.T, c *Cluster, id string) *Endpoint {
	t.Helper()
	for range 1000 {
		e, err := c.Pick(nil)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		if e.ID() == id {
			return e
		}
		c.Done(e, time.Now(), codes.OK, false)
	}
	t.Fatalf("endpoint %s not picked in 1000 picks", id)
	return nil
}

func TestClusterPendingUntilServing(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	b := startBackend(t, gate)
	c := newTestCluster(t, liveOptions("users"))
	if c.Ready() {
		t.Fatal("Ready before the first snapshot")
	}
	c.Update([]discovery.Endpoint{b.endpoint()})
	if !c.Ready() {
		t.Fatal("not Ready after the first snapshot")
	}
	s, _ := statusOf(c, b.addr)
	if s.State != StatePending || s.Source != SourceDiscovery {
		t.Fatalf("new endpoint %s/%s, want pending/discovery", s.State, s.Source)
	}
	// The backend is up, but has not said SERVING: no traffic.
	if _, err := c.Pick(nil); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("Pick on a pending endpoint: %v, want ErrNoEndpoint", err)
	}
	close(gate)
	s = waitState(t, c, b.addr, StateServing)
	if s.Source != "health:watch" || s.Reason != "SERVING" {
		t.Fatalf("serving endpoint source/reason %s/%s, want health:watch/SERVING", s.Source, s.Reason)
	}
	if e, err := pickOnce(t, c); err != nil || e.ID() != b.addr {
		t.Fatalf("Pick = %v, %v", e, err)
	}
}

func TestClusterReadyWhenEmpty(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, liveOptions("empty"))
	c.Update(nil)
	if !c.Ready() {
		t.Fatal("not Ready after an empty snapshot")
	}
	if st := c.Status(); !st.Ready || st.Total != 0 || st.Name != "empty" || st.Policy != RoundRobin {
		t.Fatalf("status %+v", st)
	}
}

// TestClusterHealthTransitions: NOT_SERVING takes an endpoint out of the
// picker quickly, SERVING brings it back, a stopped backend is ejected.
func TestClusterHealthTransitions(t *testing.T) {
	t.Parallel()
	a, b := startBackend(t, nil), startBackend(t, nil)
	c := newTestCluster(t, liveOptions("users"))
	c.Update([]discovery.Endpoint{a.endpoint(), b.endpoint()})
	waitState(t, c, a.addr, StateServing)
	waitState(t, c, b.addr, StateServing)

	// With round robin over two endpoints a pickable a shows up at least
	// every other pick; four picks without it mean it left the picker.
	notPicked := func(id string) func() bool {
		return func() bool {
			for range 4 {
				if e, err := pickOnce(t, c); err != nil || e.ID() == id {
					return false
				}
			}
			return true
		}
	}
	a.set(healthpb.HealthCheckResponse_NOT_SERVING)
	took := testkit.WaitFor(t, 2*time.Second, "NOT_SERVING endpoint leaves the picker", notPicked(a.addr))
	t.Logf("NOT_SERVING → no longer picked after %v", took)
	if took > 500*time.Millisecond {
		t.Errorf("NOT_SERVING took %v to take effect, want well under 100ms", took)
	}
	s, _ := statusOf(c, a.addr)
	if s.State != StateEjected || s.Source != "health:watch" || s.Reason != "NOT_SERVING" {
		t.Fatalf("status %+v, want ejected by health:watch NOT_SERVING", s)
	}
	if st := c.Status(); st.Healthy != 1 || st.Total != 2 {
		t.Fatalf("Healthy/Total %d/%d, want 1/2", st.Healthy, st.Total)
	}

	a.set(healthpb.HealthCheckResponse_SERVING)
	took = testkit.WaitFor(t, 2*time.Second, "SERVING endpoint back in the picker", func() bool {
		e, err := pickOnce(t, c)
		return err == nil && e.ID() == a.addr
	})
	t.Logf("SERVING → picked again after %v", took)

	b.srv.Stop()
	took = testkit.WaitFor(t, 5*time.Second, "stopped backend ejected", notPicked(b.addr))
	t.Logf("backend stopped → no longer picked after %v", took)
	s, _ = statusOf(c, b.addr)
	if s.State != StateEjected || s.Source != "health:watch" || !strings.Contains(s.Reason, "stream error") {
		t.Fatalf("status %+v, want ejected by a health stream error", s)
	}
}

func TestClusterDrain(t *testing.T) {
	t.Parallel()
	t.Run("closes after the last Done", func(t *testing.T) {
		t.Parallel()
		a, b := startBackend(t, nil), startBackend(t, nil)
		c := newTestCluster(t, liveOptions("users"))
		c.Update([]discovery.Endpoint{a.endpoint(), b.endpoint()})
		waitState(t, c, a.addr, StateServing)
		waitState(t, c, b.addr, StateServing)
		held := pickID(t, c, a.addr)
		conn := held.Conn()

		c.Update([]discovery.Endpoint{b.endpoint()})
		s, ok := statusOf(c, a.addr)
		if !ok || s.State != StateDraining || s.Outstanding != 1 {
			t.Fatalf("removed endpoint with a call in flight: %+v (listed %v), want draining with 1 outstanding", s, ok)
		}
		if st := c.Status(); st.Total != 1 {
			t.Fatalf("Total %d, want 1 (draining endpoints do not count)", st.Total)
		}
		// Update returns after the removal is applied, so this is the
		// state the drain keeps until Done.
		if got := conn.GetState(); got == connectivity.Shutdown {
			t.Fatal("connection closed while a call is outstanding")
		}
		for range 50 {
			if e, err := pickOnce(t, c); err != nil || e.ID() == a.addr {
				t.Fatalf("Pick after removal = %v, %v", e, err)
			}
		}
		c.Done(held, time.Now(), codes.OK, false)
		took := testkit.WaitFor(t, 2*time.Second, "drained connection closed", func() bool {
			return conn.GetState() == connectivity.Shutdown
		})
		t.Logf("connection closed %v after the last Done", took)
		if _, ok := statusOf(c, a.addr); ok {
			t.Fatal("closed endpoint still listed")
		}
	})

	t.Run("drain timeout", func(t *testing.T) {
		t.Parallel()
		a := startBackend(t, nil)
		opts := liveOptions("users")
		opts.DrainTimeout = 50 * time.Millisecond
		c := newTestCluster(t, opts)
		c.Update([]discovery.Endpoint{a.endpoint()})
		waitState(t, c, a.addr, StateServing)
		held := pickID(t, c, a.addr)
		c.Update(nil)
		took := testkit.WaitFor(t, 2*time.Second, "connection closed at drain timeout", func() bool {
			return held.Conn().GetState() == connectivity.Shutdown
		})
		t.Logf("connection with a call outstanding closed %v after removal (timeout 50ms)", took)
		// A late Done is harmless.
		c.Done(held, time.Now(), codes.Canceled, false)
		if held.Outstanding() != 0 {
			t.Fatalf("outstanding %d after Done", held.Outstanding())
		}
	})
}

func TestClusterKeepsConnections(t *testing.T) {
	t.Parallel()
	a, b, moved := startBackend(t, nil), startBackend(t, nil), startBackend(t, nil)
	var dials atomic.Int32
	opts := liveOptions("users")
	c, err := NewCluster(opts, func(ep discovery.Endpoint) (*grpc.ClientConn, error) {
		dials.Add(1)
		return dialPlain(ep)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.Update([]discovery.Endpoint{a.endpoint(), b.endpoint()})
	waitState(t, c, a.addr, StateServing)
	epA, epB := endpointByID(c, a.addr), endpointByID(c, b.addr)

	// Same IDs and addresses, new weight and metadata: same endpoints, same
	// connections, state kept (still serving, no pending phase).
	changed := a.endpoint()
	changed.Weight = 3
	changed.Meta = map[string]string{"zone": "b"}
	c.Update([]discovery.Endpoint{changed, b.endpoint()})
	if got := endpointByID(c, a.addr); got != epA || got.Conn() != epA.Conn() {
		t.Fatal("an unchanged endpoint got a new connection")
	}
	s, _ := statusOf(c, a.addr)
	if s.State != StateServing || s.Weight != 3 || s.Meta["zone"] != "b" {
		t.Fatalf("updated endpoint %+v, want serving with weight 3 and zone b", s)
	}

	// Same ID, new address: replaced.
	readdressed := b.endpoint()
	readdressed.Address = moved.addr
	c.Update([]discovery.Endpoint{changed, readdressed})
	nb := endpointByID(c, b.addr)
	if nb == epB || nb.Conn() == epB.Conn() || nb.Address() != moved.addr {
		t.Fatal("an endpoint with a new address kept its old connection")
	}
	testkit.WaitFor(t, 2*time.Second, "old connection closed", func() bool {
		return epB.Conn().GetState() == connectivity.Shutdown
	})
	waitState(t, c, b.addr, StateServing)
	if got := dials.Load(); got != 3 {
		t.Fatalf("%d dials, want 3", got)
	}
}

// TestClusterOutlier: five UNAVAILABLE in a row eject an endpoint, it comes
// back after BaseEjectionTime, and the next ejection lasts twice as long.
func TestClusterOutlier(t *testing.T) {
	t.Parallel()
	a, b := startBackend(t, nil), startBackend(t, nil)
	opts := liveOptions("users")
	const base = 100 * time.Millisecond
	// A long interval: no decay of the multiplier between the two rounds.
	opts.Outlier = OutlierOptions{BaseEjectionTime: base, Interval: time.Minute}
	c := newTestCluster(t, opts)
	c.Update([]discovery.Endpoint{a.endpoint(), b.endpoint()})
	waitState(t, c, a.addr, StateServing)
	waitState(t, c, b.addr, StateServing)

	for round, want := range []time.Duration{base, 2 * base} {
		for range DefaultConsecutiveFailures {
			e := pickID(t, c, a.addr)
			c.Done(e, time.Now(), codes.Unavailable, false)
		}
		ejected := waitState(t, c, a.addr, StateEjected)
		if ejected.Source != SourceOutlier || ejected.Ejections != round+1 || !strings.Contains(ejected.Reason, "ejected for "+want.String()) {
			t.Fatalf("round %d: status %+v, want outlier ejection #%d for %v", round, ejected, round+1, want)
		}
		// Not picked while ejected (checked only in the first half of the
		// ejection, so that a slow machine cannot make it legitimately
		// return meanwhile).
		for range 10 {
			e, err := pickOnce(t, c)
			if time.Since(ejected.Since) > want/2 {
				break
			}
			if err != nil || e.ID() == a.addr {
				t.Fatalf("Pick while ejected = %v, %v", e, err)
			}
		}
		back := waitState(t, c, a.addr, StateServing)
		out := back.Since.Sub(ejected.Since)
		t.Logf("round %d: ejected for %v (want %v)", round, out, want)
		if out < want {
			t.Fatalf("round %d: back after %v, before its ejection time %v", round, out, want)
		}
		if back.Source != "health:watch" {
			t.Fatalf("readmitted endpoint source %s, want health:watch", back.Source)
		}
	}
}

// TestClusterMissingHealthService: a backend without grpc.health.v1 is
// served or ejected as MissingServing says, with source "health:absent".
func TestClusterMissingHealthService(t *testing.T) {
	t.Parallel()
	for _, serving := range []bool{false, true} {
		t.Run(fmt.Sprintf("MissingServing=%v", serving), func(t *testing.T) {
			t.Parallel()
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer() // no health service
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = srv.Serve(lis)
			}()
			t.Cleanup(func() {
				srv.Stop()
				<-served
			})
			opts := liveOptions("plain")
			opts.Health.MissingServing = serving
			c := newTestCluster(t, opts)
			addr := lis.Addr().String()
			c.Update([]discovery.Endpoint{{ID: addr, Address: addr}})
			want := StateEjected
			if serving {
				want = StateServing
			}
			s := waitState(t, c, addr, want)
			if s.Source != "health:absent" {
				t.Fatalf("status %+v, want source health:absent", s)
			}
			e, err := c.Pick(nil)
			if serving != (err == nil) {
				t.Fatalf("Pick = %v with MissingServing=%v", err, serving)
			}
			c.Done(e, time.Now(), codes.OK, false)
		})
	}
}

// TestClusterCloseStopsGoroutines: Close stops the loop and every health
// watcher and closes every connection, draining ones included.
func TestClusterCloseStopsGoroutines(t *testing.T) {
	// Not parallel: goleak compares against the goroutines of this test
	// alone.
	backends := []*backend{startBackend(t, nil), startBackend(t, nil), startBackend(t, nil)}
	ignore := goleak.IgnoreCurrent()

	c, err := NewCluster(liveOptions("users"), dialPlain)
	if err != nil {
		t.Fatal(err)
	}
	var snap []discovery.Endpoint
	for _, b := range backends {
		snap = append(snap, b.endpoint())
	}
	c.Update(snap)
	for _, b := range backends {
		waitState(t, c, b.addr, StateServing)
	}
	held := pickID(t, c, backends[0].addr)
	c.Update(snap[1:]) // backends[0] drains
	conns := []*grpc.ClientConn{held.Conn(), endpointByID(c, snap[1].ID).Conn(), endpointByID(c, snap[2].ID).Conn()}

	c.Close()
	for i, conn := range conns {
		if conn.GetState() != connectivity.Shutdown {
			t.Errorf("connection %d not closed by Close", i)
		}
	}
	if _, err := c.Pick(nil); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("Pick after Close: %v", err)
	}
	c.Done(held, time.Now(), codes.Canceled, false)
	c.Update(snap) // no-op, must not block or dial
	c.Close()      // idempotent
	goleak.VerifyNone(t, ignore)
}

// TestClusterConcurrentPickUpdate hammers Pick/Done from several
// goroutines while snapshots come and go, and checks the drain guarantee:
// no call is ever handed an endpoint whose connection is closed.
func TestClusterConcurrentPickUpdate(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{RoundRobin, LeastRequest, PeakEWMA, RingHash} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			c := newTestCluster(t, Options{
				Policy:     policy,
				HashHeader: "k",
				Health:     HealthOptions{Disabled: true},
				Outlier:    OutlierOptions{ConsecutiveFailures: 3, BaseEjectionTime: 5 * time.Millisecond},
			})
			all := endpoints(6)
			c.Update(all[:3])
			headers := make([]metadata.MD, 64)
			for i := range headers {
				headers[i] = metadata.Pairs("k", strconv.Itoa(i))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			var closedPicks, picks atomic.Int64
			for g := range 4 {
				wg.Go(func() {
					for i := range 3000 {
						if ctx.Err() != nil {
							return
						}
						e, err := c.Pick(&PickInfo{Header: headers[i%len(headers)]})
						if err != nil {
							continue
						}
						picks.Add(1)
						if e.Conn().GetState() == connectivity.Shutdown {
							closedPicks.Add(1)
						}
						code := codes.OK
						if (i+g)%7 == 0 {
							code = codes.Unavailable
						}
						c.Done(e, time.Now(), code, false)
					}
				})
			}
			for i := range 60 {
				lo := i % 4
				c.Update(all[lo : lo+3])
			}
			wg.Wait()
			if n := closedPicks.Load(); n != 0 {
				t.Fatalf("%d of %d picks returned an endpoint with a closed connection", n, picks.Load())
			}
			c.Update(all[:1])
			testkit.WaitFor(t, 2*time.Second, "removed endpoints drained", func() bool {
				return len(c.Status().Endpoints) == 1
			})
			for _, e := range c.Status().Endpoints {
				if e.Outstanding != 0 {
					t.Fatalf("%s: %d outstanding after every Done", e.ID, e.Outstanding)
				}
			}
		})
	}
}
