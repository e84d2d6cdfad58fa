package discovery

import "context"

// Static is a Resolver over a fixed list of endpoints (the config's
// `endpoints:` key). It is safe for concurrent use; each Watch sends its own
// copy of the list.
type Static struct {
	eps []Endpoint
}

var _ Resolver = (*Static)(nil)

// NewStatic returns a Static resolver for eps. An endpoint without an ID gets
// its address as ID and a zero Weight becomes 1. The list is sorted by ID and
// an endpoint whose ID was already listed is dropped, because consumers key
// connections by ID (the config validator is the place to reject duplicates
// loudly). NewStatic copies eps; the caller may reuse it.
func NewStatic(eps []Endpoint) *Static {
	cp := cloneEndpoints(eps)
	for i := range cp {
		if cp[i].ID == "" {
			cp[i].ID = cp[i].Address
		}
		if cp[i].Weight == 0 {
			cp[i].Weight = 1
		}
	}
	// Stable sort keeps the first of several equal IDs in config order.
	sortEndpoints(cp)
	out := cp[:0]
	for _, ep := range cp {
		if len(out) > 0 && ep.ID == out[len(out)-1].ID {
			continue
		}
		out = append(out, ep)
	}
	return &Static{eps: out}
}

// Watch sends the list once, then blocks until ctx is done and returns
// ctx.Err(). If ctx is already done it sends nothing.
func (s *Static) Watch(ctx context.Context, update func([]Endpoint)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	update(cloneEndpoints(s.eps))
	<-ctx.Done()
	return ctx.Err()
}
