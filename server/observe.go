package server

import (
	"sort"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/discovery"
)

// ClusterStatuses returns the status of every cluster the data path uses,
// sorted by name, for metrics. It reads the current proxy state rather
// than taking the server's lock, so a scrape neither waits for a reload
// nor holds up a shutdown.
func (s *Server) ClusterStatuses() []balancer.ClusterStatus {
	st := s.dir.State()
	if st == nil {
		return nil
	}
	out := make([]balancer.ClusterStatus, 0, len(st.Clusters))
	for _, cl := range st.Clusters {
		out = append(out, cl.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DiscoveryStatuses returns the watch status of each cluster whose
// endpoints come from Consul, by cluster name.
func (s *Server) DiscoveryStatuses() map[string]discovery.WatchStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]discovery.WatchStatus{}
	for name, r := range s.runs {
		if sr, ok := r.resolver.(statusReporter); ok {
			out[name] = sr.Status()
		}
	}
	return out
}

// ReloadCounts returns how many reloads succeeded and failed. The initial
// load, which New makes and which must succeed for a Server to exist, is
// not counted.
func (s *Server) ReloadCounts() (ok, failed uint64) {
	ok = s.reloads.Load()
	if ok > 0 {
		ok--
	}
	return ok, s.failed.Load()
}
