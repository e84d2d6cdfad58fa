package admin_test

import (
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestReadyPid checks /ready?pid=N, which tells the processes sharing the
// admin port during an upgrade apart: 200 only from process N when ready.
func TestReadyPid(t *testing.T) {
	t.Parallel()
	src := &source{}
	a := startAdmin(t, src)
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name  string
		ready bool
		query string
		code  int
		body  string
	}{
		{"no pid", true, "", http.StatusOK, "ready"},
		{"this pid", true, "?pid=" + me, http.StatusOK, "ready"},
		{"another pid", true, "?pid=1", http.StatusServiceUnavailable, "not ready: this is meshd pid " + me + ", not 1"},
		{"this pid, not ready", false, "?pid=" + me, http.StatusServiceUnavailable, "not ready: warming"},
	} {
		src.setReady(tc.ready, "warming")
		code, body, h := get(t, a.Addr(), "/ready"+tc.query)
		if code != tc.code || !strings.Contains(body, tc.body) || h.Get("Meshd-Pid") != me {
			t.Errorf("%s: GET /ready%s = %d %q (Meshd-Pid %q), want %d %q (Meshd-Pid %s)",
				tc.name, tc.query, code, body, h.Get("Meshd-Pid"), tc.code, tc.body, me)
		}
	}
}
