package server

import "github.com/meshd/meshd/h2proxy"

// FrameStats returns the frame engine's counters by listener name
// (metrics.FrameSource); empty when engine is grpc.
func (s *Server) FrameStats() map[string]h2proxy.Stats {
	out := make(map[string]h2proxy.Stats)
	for _, l := range s.listeners {
		if fs, ok := l.srv.(frameServer); ok {
			out[l.cfg.Name] = fs.Stats()
		}
	}
	return out
}
