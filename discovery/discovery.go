package discovery

import (
	"context"
	"maps"
	"slices"
	"strings"
)

// Endpoint is one backend instance of a cluster.
//
// Endpoints handed to an update callback belong to the callee: the resolver
// keeps its own copy, so the callee may keep or modify them.
type Endpoint struct {
	// ID identifies the instance across snapshots, so that a consumer keeps
	// the connection of an instance that is re-announced unchanged. Static
	// endpoints use their address; Consul instances use node + "/" + service
	// ID, because a service ID is only unique per node.
	ID string
	// Address is the host:port meshd dials.
	Address string
	// Weight is the instance's relative share for weighted balancing, >= 1.
	// Static endpoints default to 1; Consul instances use Weights.Passing
	// (0 is read as 1).
	Weight uint32
	// Tags are the instance's Consul tags; nil when there are none.
	Tags []string
	// Meta is the instance's Consul service metadata; nil when there is none.
	Meta map[string]string
	// Zone is the instance's locality for zone-aware balancing: a static
	// endpoint's zone, or for Consul the value of the query's ZoneKey in
	// the node's metadata, else in the service's. "" when unknown.
	Zone string
}

// Resolver produces whole snapshots of one service's endpoints (never deltas).
type Resolver interface {
	// Watch calls update with each new snapshot, sorted by ID and
	// deduplicated: a snapshot equal to the previous one is not sent again.
	// It runs until ctx is done and then returns ctx.Err(). update is called
	// from one goroutine, sequentially, and may block: the resolver waits for
	// it before looking for the next snapshot.
	Watch(ctx context.Context, update func([]Endpoint)) error
}

// sortEndpoints orders eps by ID, the order every snapshot is sent in, so that
// equal sets compare equal. The sort is stable so that, among equal IDs, the
// first listed stays first.
func sortEndpoints(eps []Endpoint) {
	slices.SortStableFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.ID, b.ID) })
}

// cloneEndpoints deep-copies a snapshot so that the resolver's copy, kept to
// detect unchanged results, cannot be changed by the consumer. The result is
// never nil: an empty snapshot is a real answer ("no instances"), distinct
// from no answer at all.
func cloneEndpoints(eps []Endpoint) []Endpoint {
	out := make([]Endpoint, len(eps))
	for i, ep := range eps {
		ep.Tags = slices.Clone(ep.Tags)
		ep.Meta = maps.Clone(ep.Meta)
		out[i] = ep
	}
	return out
}

// equalEndpoints reports whether two sorted snapshots are the same. nil and
// empty tags or metadata count as equal: Consul's JSON may return either.
func equalEndpoints(a, b []Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y Endpoint) bool {
		return x.ID == y.ID && x.Address == y.Address && x.Weight == y.Weight && x.Zone == y.Zone &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}
