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

// listenerView is one listener on the dashboard.
type listenerView struct {
	Name     string   `json:"name"`
	Address  string   `json:"address"` // bound address
	Features []string `json:"features,omitempty"`
}

// Overview implements admin.OverviewSource: the dashboard's listeners and
// reload status.
func (s *Server) Overview() any {
	cfg := s.cfg.Load()
	addrs := s.ListenerAddrs()
	out := struct {
		Summary       string         `json:"summary"`
		Listeners     []listenerView `json:"listeners"`
		ReloadsOK     uint64         `json:"reloads_ok"`
		ReloadsFailed uint64         `json:"reloads_failed"`
		LastError     string         `json:"last_reload_error,omitempty"`
	}{Summary: cfg.Summary()}
	out.ReloadsOK, out.ReloadsFailed = s.ReloadCounts()
	if e := s.lastErr.Load(); e != nil {
		out.LastError = *e
	}
	for _, l := range cfg.Listeners {
		v := listenerView{Name: l.Name, Address: addrs[l.Name]}
		if v.Address == "" {
			v.Address = l.Address
		}
		if l.TLS != nil {
			v.Features = append(v.Features, "tls")
			if l.TLS.ClientCAFile != "" {
				v.Features = append(v.Features, "client certificates")
			}
		}
		if l.MeshTLS != "" {
			v.Features = append(v.Features, "mesh_tls "+l.MeshTLS)
		}
		if l.GRPCWeb != nil {
			v.Features = append(v.Features, "grpc-web")
		}
		if l.Reflection {
			v.Features = append(v.Features, "reflection")
		}
		if l.OriginalDst != nil {
			v.Features = append(v.Features, "original_dst")
		}
		out.Listeners = append(out.Listeners, v)
	}
	return out
}
