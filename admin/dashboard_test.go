package admin_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/meshd/meshd/admin"
)

// overviewSource adds the dashboard's overview to source.
type overviewSource struct{ source }

func (*overviewSource) Overview() any {
	return map[string]any{"listeners": []map[string]string{{"name": "main", "address": "127.0.0.1:1"}}, "last_reload_error": "bad"}
}

// TestDashboard: GET / is the page, its assets come from the binary with
// relative URLs only, and /dashboard.json carries routes, clusters,
// overview and the recent figures; the JSON endpoints stay as they were.
func TestDashboard(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	a := startAdmin(t, &overviewSource{}, admin.WithRecentStats(func() any { calls.Add(1); return map[string]any{"routes": map[string]any{}} }))
	code, body, h := get(t, a.Addr(), "/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(body, "<title>meshd</title>") {
		t.Fatalf("GET /: %d %s\n%s", code, h.Get("Content-Type"), body)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	for _, abs := range []string{`src="/`, `href="/`, "http://", "https://"} {
		if strings.Contains(body, abs) {
			t.Errorf("page has a non-relative URL (%s): it would break behind a port-forward or prefix", abs)
		}
	}
	for _, p := range []string{"/ui/dashboard.js", "/ui/dashboard.css"} {
		code, body, _ := get(t, a.Addr(), p)
		if code != 200 || len(body) < 100 {
			t.Errorf("GET %s: %d (%d bytes)", p, code, len(body))
		}
		if strings.Contains(body, "http://") && !strings.Contains(body, "http://www.w3.org/2000/svg") {
			t.Errorf("%s loads from another origin", p)
		}
	}
	if code, _, _ := get(t, a.Addr(), "/nope"); code != 404 {
		t.Errorf("GET /nope: %d, want 404", code)
	}
	if calls.Load() != 0 {
		t.Errorf("recent figures computed %d times before any dashboard.json", calls.Load())
	}
	code, body, _ = get(t, a.Addr(), "/dashboard.json")
	var d struct {
		Ready    string
		Routes   []map[string]string
		Clusters map[string]any
		Overview struct {
			LastReloadError string `json:"last_reload_error"`
		}
		Recent map[string]any
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil || code != 200 {
		t.Fatalf("dashboard.json: %d %v\n%s", code, err, body)
	}
	if d.Ready != "ready" || len(d.Routes) != 1 || d.Clusters["users"] == nil || d.Overview.LastReloadError != "bad" || d.Recent["routes"] == nil || calls.Load() != 1 {
		t.Errorf("dashboard.json: %s", body)
	}
	if code, body, _ := get(t, a.Addr(), "/routes"); code != 200 || !strings.Contains(body, `"all"`) {
		t.Errorf("/routes changed: %d %s", code, body)
	}
}
