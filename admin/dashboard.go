package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"time"
)

// ui is the dashboard: one HTML page, its script and style sheet, served
// as they are (no build step, no CDN, no library: the charts are inline
// SVG the script draws). Every URL in them is relative, so the page works
// on loopback, through `kubectl port-forward` and under a path prefix.
//
//go:embed ui
var ui embed.FS

// OverviewSource is implemented by a Source that can describe what the
// dashboard shows beside routes and clusters: listeners and reload status.
type OverviewSource interface {
	Overview() any
}

// WithRecentStats makes the dashboard show f's per-route and per-cluster
// figures over the last minute (metrics.Metrics.Recent). f runs only when
// a dashboard asks, so it costs nothing while nobody looks.
func WithRecentStats(f func() any) Option { return func(s *Server) { s.recent = f } }

// dashboardCSP keeps the page to its own assets: no inline script, no
// other origin.
const dashboardCSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"

func (s *Server) dashboardRoutes(mux *http.ServeMux) {
	sub, _ := fs.Sub(ui, "ui")
	files := http.FileServerFS(sub)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", dashboardCSP)
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /dashboard.json", s.json(s.dashboard))
}

// dashboard is what /dashboard.json answers: one poll's worth of
// everything the page draws.
func (s *Server) dashboard() any {
	out := map[string]any{
		"time":     time.Now().UnixMilli(),
		"routes":   s.src.Routes(),
		"clusters": s.src.Clusters(),
		"ready":    "ready",
	}
	if err := s.src.Ready(); err != nil {
		out["ready"] = err.Error()
	}
	if o, ok := s.src.(OverviewSource); ok {
		out["overview"] = o.Overview()
	}
	if s.recent != nil {
		out["recent"] = s.recent()
	}
	return out
}
