package discovery

import (
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestNextIndex(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first query", 0, 42, 42},
		{"advances", 42, 50, 50},
		{"unchanged", 42, 42, 42},
		{"goes backwards: start over", 42, 7, 0},
		{"zero index: never block on 0", 0, 0, 1},
		{"backwards to zero", 42, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := nextIndex(tc.prev, tc.got); got != tc.want {
				t.Fatalf("nextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opts      []ConsulOption
		n         uint64
		low, high time.Duration
	}{
		{"defaults: first retry", nil, 1, DefaultBackoffBase / 2, DefaultBackoffBase},
		{"defaults: doubles", nil, 3, DefaultBackoffBase * 2, DefaultBackoffBase * 4},
		{"defaults: capped", nil, 1000, DefaultBackoffMax / 2, DefaultBackoffMax},
		{"custom", []ConsulOption{WithBackoff(10*time.Millisecond, 100*time.Millisecond)}, 4, 40 * time.Millisecond, 80 * time.Millisecond},
		{"custom capped", []ConsulOption{WithBackoff(10*time.Millisecond, 100*time.Millisecond)}, 10, 50 * time.Millisecond, 100 * time.Millisecond},
		{"max below base", []ConsulOption{WithBackoff(time.Second, time.Millisecond)}, 5, 500 * time.Millisecond, time.Second},
		{"zero base keeps defaults", []ConsulOption{WithBackoff(0, time.Hour)}, 1000, DefaultBackoffMax / 2, DefaultBackoffMax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := NewConsul(nil, ConsulQuery{Service: "x"}, tc.opts...)
			seen := map[time.Duration]bool{}
			for range 200 {
				d := c.backoff(tc.n)
				if d < tc.low || d > tc.high {
					t.Fatalf("backoff(%d) = %v, want within [%v, %v]", tc.n, d, tc.low, tc.high)
				}
				seen[d] = true
			}
			if len(seen) < 2 {
				t.Fatalf("backoff(%d) has no jitter: always %v", tc.n, seen)
			}
		})
	}
}

func TestConsulEndpoints(t *testing.T) {
	t.Parallel()
	node := &api.Node{Node: "n1", Address: "10.0.0.1", Meta: map[string]string{"zone": "node-zone"}}
	entry := func(svc *api.AgentService) *api.ServiceEntry { return &api.ServiceEntry{Node: node, Service: svc} }
	got := consulEndpoints([]*api.ServiceEntry{
		entry(&api.AgentService{ID: "b", Address: "10.0.0.9", Port: 80, Weights: api.AgentWeights{Passing: 0},
			Tags: []string{}, Meta: map[string]string{}}),
		entry(&api.AgentService{ID: "a", Port: 81, Weights: api.AgentWeights{Passing: 4},
			Tags: []string{"t"}, Meta: map[string]string{"k": "v"}}),
		entry(&api.AgentService{ID: "v6", Address: "fd00::1", Port: 82}),
		entry(&api.AgentService{ID: "noport", Address: "10.0.0.8"}),
		{Node: node}, // no service
		nil,
	}, "")
	want := []Endpoint{
		{ID: "n1/a", Address: "10.0.0.1:81", Weight: 4, Tags: []string{"t"}, Meta: map[string]string{"k": "v"}},
		{ID: "n1/b", Address: "10.0.0.9:80", Weight: 1},
		{ID: "n1/v6", Address: "[fd00::1]:82", Weight: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("consulEndpoints:\n got %+v\nwant %+v", got, want)
	}
}

// TestConsulEndpointZones: the zone comes from the node's metadata first,
// then the service's; none when neither has the key.
func TestConsulEndpointZones(t *testing.T) {
	t.Parallel()
	zoned := &api.Node{Node: "n1", Address: "10.0.0.1", Meta: map[string]string{"az": "us-east-1a"}}
	bare := &api.Node{Node: "n2", Address: "10.0.0.2"}
	got := consulEndpoints([]*api.ServiceEntry{
		{Node: zoned, Service: &api.AgentService{ID: "a", Port: 1, Meta: map[string]string{"az": "ignored"}}},
		{Node: bare, Service: &api.AgentService{ID: "b", Port: 1, Meta: map[string]string{"az": "us-east-1b"}}},
		{Node: bare, Service: &api.AgentService{ID: "c", Port: 2}},
	}, "az")
	var zones []string
	for _, e := range got {
		zones = append(zones, e.Zone)
	}
	if want := []string{"us-east-1a", "us-east-1b", ""}; !reflect.DeepEqual(zones, want) {
		t.Fatalf("zones %q, want %q", zones, want)
	}
}

func TestEqualEndpoints(t *testing.T) {
	t.Parallel()
	base := []Endpoint{{ID: "a", Address: "h:1", Weight: 1, Tags: []string{"x"}, Meta: map[string]string{"k": "v"}}}
	mod := func(f func(*Endpoint)) []Endpoint {
		cp := cloneEndpoints(base)
		f(&cp[0])
		return cp
	}
	tests := []struct {
		name string
		b    []Endpoint
		want bool
	}{
		{"same", cloneEndpoints(base), true},
		{"address", mod(func(e *Endpoint) { e.Address = "h:2" }), false},
		{"weight", mod(func(e *Endpoint) { e.Weight = 2 }), false},
		{"tags", mod(func(e *Endpoint) { e.Tags = nil }), false},
		{"meta", mod(func(e *Endpoint) { e.Meta["k"] = "w" }), false},
		{"id", mod(func(e *Endpoint) { e.ID = "b" }), false},
		{"length", nil, false},
	}
	for _, tc := range tests {
		if got := equalEndpoints(base, tc.b); got != tc.want {
			t.Errorf("%s: equalEndpoints = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !equalEndpoints(nil, []Endpoint{}) {
		t.Error("nil and empty snapshots differ")
	}
}
