package server

import (
	"log/slog"
	"testing"
	"time"

	"github.com/meshd/meshd/discovery"
)

// The owner index follows each cluster's discovery snapshots, breaks ties
// by name, and forgets a cluster whose run stopped.
func TestDestinationsOwner(t *testing.T) {
	t.Parallel()
	d := newDestinations(slog.New(slog.DiscardHandler))
	defer d.close()
	users, users2, orders := &clusterRun{}, &clusterRun{}, &clusterRun{}
	var got []discovery.Endpoint
	sink := func(eps []discovery.Endpoint) { got = eps }
	d.watch(users, "users", sink)([]discovery.Endpoint{{Address: "10.0.0.1:9000"}, {Address: "[::ffff:10.0.0.2]:9000"}})
	d.watch(orders, "orders", sink)([]discovery.Endpoint{{Address: "10.0.0.3:9000"}, {Address: "10.0.0.1:9000"}})
	if len(got) != 2 {
		t.Fatalf("the cluster's own update saw %d endpoints, want 2", len(got))
	}
	for _, tc := range []struct {
		addr, want string
		ok         bool
	}{
		{"10.0.0.1:9000", "orders", true}, // listed by both: the name that sorts first
		{"10.0.0.2:9000", "users", true},  // IPv4-mapped form normalized
		{"10.0.0.3:9000", "orders", true},
		{"10.0.0.4:9000", "", false},
	} {
		if name, ok := d.Owner(tc.addr); name != tc.want || ok != tc.ok {
			t.Errorf("Owner(%s) = %q, %v; want %q, %v", tc.addr, name, ok, tc.want, tc.ok)
		}
	}
	// A new snapshot replaces the cluster's addresses.
	d.watch(orders, "orders", sink)([]discovery.Endpoint{{Address: "10.0.0.5:9000"}})
	if name, _ := d.Owner("10.0.0.1:9000"); name != "users" {
		t.Errorf("after orders dropped 10.0.0.1: owner %q, want users", name)
	}
	// A replaced run (same name) and then the old one stopping: the new
	// run's addresses stay.
	d.watch(users2, "users", sink)([]discovery.Endpoint{{Address: "10.0.0.6:9000"}})
	d.forget(users)
	if _, ok := d.Owner("10.0.0.1:9000"); ok {
		t.Error("a stopped run's address still has an owner")
	}
	if name, _ := d.Owner("10.0.0.6:9000"); name != "users" {
		t.Errorf("the replacement run's address: owner %q, want users", name)
	}
}

// Passthrough clusters are made once per destination, evicted when idle
// and closed with the Server.
func TestDestinationsPassthrough(t *testing.T) {
	t.Parallel()
	d := newDestinations(slog.New(slog.DiscardHandler))
	a, aUp, err := d.Passthrough("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if again, againUp, _ := d.Passthrough("127.0.0.1:1"); again != a || againUp != aUp {
		t.Error("a second call for the same destination made a new cluster or Upstream")
	}
	b, bUp, _ := d.Passthrough("127.0.0.1:2")
	if b == a || !a.Ready() {
		t.Errorf("distinct destinations share a cluster, or it is not ready (ready %v)", a.Ready())
	}
	if aUp.Pool == nil || bUp.Pool == aUp.Pool {
		t.Error("passthrough clusters do not each have a pool of their own")
	}
	if n := d.evictIdle(time.Now().Add(-time.Minute)); n != 0 {
		t.Errorf("evicted %d recently used clusters", n)
	}
	if n := d.evictIdle(time.Now().Add(time.Minute)); n != 2 {
		t.Errorf("evicted %d idle clusters, want 2", n)
	}
	if c, _, _ := d.Passthrough("127.0.0.1:1"); c == a {
		t.Error("an evicted cluster was handed out again")
	}
	d.close()
	if _, _, err := d.Passthrough("127.0.0.1:3"); err == nil {
		t.Error("Passthrough after close succeeded")
	}
	d.close() // idempotent
}
