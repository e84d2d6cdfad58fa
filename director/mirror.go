package director

import (
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
)

// mirror asks the engine for a copy of the call to m's cluster
// (engine.Target.Mirror), to the endpoint a pick there gives. Like the
// rest of Direct it never blocks: a mirror cluster with no endpoint costs
// the copy, counted, and nothing else. The copy is counted on st while it
// runs (it may outlive the call a little), uses no retry budget and
// feeds the mirror cluster's balancer only.
func (d *Director) mirror(t *engine.Target, st *State, route string, m *policy.Mirror, req *engine.Request) {
	cl := st.Clusters[m.Cluster]
	if cl == nil {
		d.mirrored(route, "no_endpoint")
		return
	}
	ep, err := cl.Pick(&balancer.PickInfo{Method: req.Method, Header: req.Header})
	if err != nil {
		d.mirrored(route, "no_endpoint")
		return
	}
	st.calls.Add(1)
	start := time.Now()
	t.Mirror = &engine.Mirror{Addr: ep.Address(), Upstream: st.upstream(m.Cluster), Done: func(r engine.MirrorResult) {
		cl.Done(ep, start, codes.OK, r == engine.MirrorFailed)
		st.calls.Add(-1)
		d.mirrored(route, r.String())
	}}
}

// mirrored tells the observers that want it what became of a copy.
func (d *Director) mirrored(route, result string) {
	for _, o := range d.observers {
		if m, ok := o.(callrecord.MirrorObserver); ok {
			m.ObserveMirror(route, result)
		}
	}
}
