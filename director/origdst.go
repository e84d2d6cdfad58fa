package director

import (
	"context"
	"sync"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/origdst"
	"github.com/meshd/meshd/router"
)

// OriginalDstHeader is the pseudo header a route's header match can test to
// select calls by their connection's original destination ("ip:port"), e.g.
// {name: ":original-dst", exact: "10.0.0.5:9000"} or {regex: ".*:9000"}.
// It is seen only by routing: clients cannot set it, and it is never
// forwarded.
const OriginalDstHeader = ":original-dst"

// Destinations resolves the clusters of calls that arrived on a transparent
// (original_dst) listener. The server implements it over its clusters' live
// discovery snapshots.
type Destinations interface {
	// Owner returns the name of a cluster one of whose current endpoints
	// has the address addr ("ip:port").
	Owner(addr string) (string, bool)
	// Passthrough returns a cluster whose only endpoint is addr, and the
	// Upstream (with the cluster's own pool) its calls go through.
	Passthrough(addr string) (*balancer.Cluster, *engine.Upstream, error)
}

// WithDestinations enables routing by original destination.
func WithDestinations(dests Destinations) Option {
	return func(d *Director) {
		d.dst = &dstRouting{
			dests:       dests,
			inbound:     syntheticRoute(RouteInbound, config.OriginalDstCluster),
			passthrough: syntheticRoute(RouteOriginalDst, config.OriginalDstCluster),
		}
	}
}

// dstRouting is the Director's state for transparent calls.
type dstRouting struct {
	dests       Destinations
	inbound     *router.Route
	passthrough *router.Route
	// owners caches the synthetic route to each owner cluster, so routing
	// a transparent call allocates no route.
	owners sync.Map // cluster name → *router.Route
}

// Names of the routes meshd makes up for transparent calls that no
// configured route took; they appear in logs, metrics and traces.
const (
	// RouteInbound takes every call of an inbound listener to its original
	// destination, the local application.
	RouteInbound = config.RouteInbound
	// RouteOriginalDst takes an outbound call to the cluster owning its
	// original destination, or to the destination itself.
	RouteOriginalDst = config.RouteOriginalDst
)

// lookup is Table.Lookup extended for transparent calls: an inbound call
// goes to its original destination; an outbound call takes the first route
// that matches it (":original-dst" visible to header matches), else the
// cluster that owns its original destination, else the destination itself.
func (d *Director) lookup(ctx context.Context, st *State, req *engine.Request) *router.Route {
	method, md := req.Method, routingHeaders(st, req)
	table := st.Table
	if table.ListenerScoped() {
		table = table.ForListener(ListenerFrom(ctx))
	}
	if d.dst == nil {
		return table.Match(method, req.Authority, md)
	}
	info, ok := origdst.FromContext(ctx)
	if !ok {
		return table.Match(method, req.Authority, md)
	}
	if info.Inbound {
		return d.dst.inbound
	}
	addr := info.Dst.String()
	if r := table.Match(method, req.Authority, dstHeaders{md: md, dst: addr}); r != nil {
		return r
	}
	if name, ok := d.dst.dests.Owner(addr); ok && st.Clusters[name] != nil {
		return d.dst.owner(name)
	}
	return d.dst.passthrough
}

// cluster returns the loaded cluster called name and its Upstream; the
// built-in original_dst cluster resolves to the call's own original
// destination. It returns a nil cluster when there is no such cluster.
func (d *Director) cluster(ctx context.Context, st *State, name string) (*balancer.Cluster, *engine.Upstream) {
	if cl := st.Clusters[name]; cl != nil || name != config.OriginalDstCluster || d.dst == nil {
		return cl, st.upstream(name)
	}
	info, ok := origdst.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	cl, up, err := d.dst.dests.Passthrough(info.Dst.String())
	if err != nil {
		return nil, nil
	}
	return cl, up
}

// owner returns the cached route to cluster, named "original_dst:CLUSTER".
func (d *dstRouting) owner(cluster string) *router.Route {
	if r, ok := d.owners.Load(cluster); ok {
		return r.(*router.Route)
	}
	r, _ := d.owners.LoadOrStore(cluster, syntheticRoute(RouteOriginalDst+":"+cluster, cluster))
	return r.(*router.Route)
}

// syntheticRoute compiles a catch-all route to one cluster. The shape is
// fixed and always compiles; nil (no route: UNIMPLEMENTED) is only a
// safeguard.
func syntheticRoute(name, cluster string) *router.Route {
	t, err := router.New([]config.Route{{Name: name, Match: config.Match{Prefix: "/"}, Cluster: cluster}})
	if err != nil {
		return nil
	}
	return t.Routes()[0]
}

// dstHeaders shows routing the call's metadata plus OriginalDstHeader. The
// inbound metadata itself is not changed: what is forwarded stays as sent.
type dstHeaders struct {
	md  router.Headers
	dst string
}

func (h dstHeaders) Get(key string) []string {
	if key == OriginalDstHeader {
		return []string{h.dst}
	}
	if h.md == nil {
		return nil
	}
	return h.md.Get(key)
}

// pseudoHeaders shows routing the call's metadata plus its :authority and
// :path (router.AuthorityHeader, router.PathHeader), for the tables that
// test them (GRPCRoute hostnames, method regexes).
type pseudoHeaders struct {
	md        router.Headers
	authority string
	path      string
}

func (h pseudoHeaders) Get(key string) []string {
	switch key {
	case router.AuthorityHeader:
		if h.authority == "" {
			return nil
		}
		return []string{h.authority}
	case router.PathHeader:
		return []string{h.path}
	}
	if h.md == nil {
		return nil
	}
	return h.md.Get(key)
}

// routingHeaders is what the route table sees of req: its metadata, plus
// the pseudo headers when some route tests them.
func routingHeaders(st *State, req *engine.Request) router.Headers {
	var md router.Headers
	if req.Header != nil {
		md = req.Header
	}
	if !st.Table.MatchesPseudo() {
		return md
	}
	return pseudoHeaders{md: md, authority: req.Authority, path: req.Method}
}
