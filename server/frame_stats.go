package server

import (
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
)

// FrameStats returns each listener's engine counters by listener name
// (metrics.FrameSource): its client connections' side. Backend connections
// are the clusters' (PoolStats).
func (s *Server) FrameStats() map[string]engine.Stats {
	out := make(map[string]engine.Stats, len(s.listeners))
	for _, l := range s.listeners {
		out[l.cfg.Name] = l.srv.Stats()
	}
	return out
}

// PoolStats returns the upstream connection pool counters of each cluster
// in force, by cluster name (metrics.PoolSource). Like ClusterStatuses it
// reads the current State, not the Server's lock. The passthrough clusters
// of original destinations are summed under the built-in original_dst
// cluster's name, so the label's values stay those of the config.
func (s *Server) PoolStats() map[string]engine.PoolStats {
	out := make(map[string]engine.PoolStats)
	if st := s.dir.State(); st != nil {
		for name, up := range st.Upstreams {
			if up != nil && up.Pool != nil {
				out[name] = up.Pool.Stats()
			}
		}
	}
	if pt, ok := s.dests.poolStats(); ok {
		out[config.OriginalDstCluster] = pt
	}
	return out
}
