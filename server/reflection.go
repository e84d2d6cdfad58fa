package server

import (
	"context"
	"net"
	"slices"
	"strings"

	"google.golang.org/grpc"
	v1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/reflection"
)

// The reflection methods meshd answers itself on a reflection listener.
var (
	reflectionV1      = "/" + v1.ServerReflection_ServiceDesc.ServiceName + "/ServerReflectionInfo"
	reflectionV1alpha = "/" + v1alpha.ServerReflection_ServiceDesc.ServiceName + "/ServerReflectionInfo"
)

// localReflection is a reflection listener's merged reflection service
// (package reflection): a grpc-go server in meshd, which the listener's
// engine reaches like a backend, over socketpairs (its own Pool; Target
// Upstream below), so the engine needs nothing new to serve a method
// locally.
type localReflection struct {
	merger *reflection.Merger
	grpc   *grpc.Server
	queue  *connQueue
	target engine.Target
}

// newLocalReflection builds lc's reflection service; it serves once
// start runs.
func (s *Server) newLocalReflection(lc config.Listener) *localReflection {
	lr := &localReflection{
		merger: reflection.New(func() reflection.Source { return s.reflectionSource(lc.Name) }, 0, s.log.With("component", "reflection", "listener", lc.Name)),
		grpc:   grpc.NewServer(),
		queue:  newConnQueue(),
	}
	lr.merger.Register(lr.grpc)
	up := &engine.Upstream{Name: "meshd-reflection", Dial: func(ctx context.Context, _ string) (net.Conn, error) {
		mine, theirs, err := socketpair()
		if err != nil {
			return nil, err
		}
		lr.queue.push(theirs)
		return mine, nil
	}}
	lr.target = engine.Target{Addr: "meshd-reflection", Upstream: up}
	go func() { _ = lr.grpc.Serve(lr.queue) }() // returns at Stop/GracefulStop
	return lr
}

// reflectionDirector answers the reflection methods locally and routes
// everything else with next.
type reflectionDirector struct {
	next  engine.Director
	local *localReflection
}

func (d reflectionDirector) Direct(ctx context.Context, req *engine.Request) (engine.Target, error) {
	if req.Method == reflectionV1 || req.Method == reflectionV1alpha {
		return d.local.target, nil
	}
	return d.next.Direct(ctx, req)
}

// reflectionSource is what listener routes to now: every cluster of
// every route open to listener (routes limited to other listeners are
// not there: their services are not reachable from it), in route order,
// each asked through one serving endpoint.
func (s *Server) reflectionSource(listener string) reflection.Source {
	st := s.dir.State()
	if st == nil {
		return reflection.Source{}
	}
	routes := st.Table.ForListener(listener).Routes()
	var src reflection.Source
	src.Key = st
	seen := map[string]bool{}
	for _, r := range routes {
		for _, wc := range r.Clusters {
			if seen[wc.Name] {
				continue
			}
			seen[wc.Name] = true
			cl := st.Clusters[wc.Name]
			if cl == nil {
				continue
			}
			eps := cl.Serving()
			if len(eps) == 0 {
				continue
			}
			src.Backends = append(src.Backends, reflection.Backend{Cluster: wc.Name, Conn: eps[0].Conn(), Key: eps[0].Address()})
		}
	}
	src.Keep = func(service, cluster string) bool {
		for _, r := range routes {
			if !slices.ContainsFunc(r.Clusters, func(wc config.WeightedCluster) bool { return wc.Name == cluster }) {
				continue
			}
			if matchesService(r.Match, service) {
				return true
			}
		}
		return false
	}
	return src
}

// matchesService reports whether a route's match can take some method
// of service (headers aside: a call may carry them).
func matchesService(m config.Match, service string) bool {
	prefix := "/" + service + "/"
	switch {
	case m.Method != "":
		return strings.HasPrefix(m.Method, prefix)
	case m.Service != "":
		return m.Service == service
	default:
		return strings.HasPrefix(prefix, m.Prefix) || strings.HasPrefix(m.Prefix, prefix)
	}
}

func (lr *localReflection) gracefulStop() { lr.grpc.GracefulStop(); lr.queue.close() }

func (lr *localReflection) stop() { lr.grpc.Stop(); lr.queue.close() }
