package policy

// Mirror is a route's mirroring: a sampled copy of its calls goes to
// another cluster, responses discarded (shadow traffic). A nil *Mirror
// copies nothing.
type Mirror struct {
	// Cluster receives the copies.
	Cluster string
	// Percent is the share of calls copied (0..100).
	Percent float64
}

// Sample reports whether a call is copied; roll is a uniform draw in
// [0, 100). It is the one sampling decision (m nil: never).
func (m *Mirror) Sample(roll float64) bool { return m != nil && roll < m.Percent }
