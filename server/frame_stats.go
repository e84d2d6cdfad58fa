package server

import "github.com/meshd/meshd/engine"

// FrameStats returns each listener's engine counters by listener name
// (metrics.FrameSource).
func (s *Server) FrameStats() map[string]engine.Stats {
	out := make(map[string]engine.Stats, len(s.listeners))
	for _, l := range s.listeners {
		out[l.cfg.Name] = l.srv.Stats()
	}
	return out
}
