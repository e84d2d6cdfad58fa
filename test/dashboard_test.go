package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
)

// TestDashboardBrowser loads the admin dashboard of a real meshd with real
// backends in headless Chromium, checks that listeners, routes (in match
// order, with their split) and endpoints appear with last-minute figures,
// ejects an endpoint (its health turns NOT_SERVING) and sees the page show
// it ejected, and saves screenshots. MESHD_DASHBOARD_SCREENSHOT=path also
// writes the screenshot there (docs/dashboard.png is made this way).
//
// Chromium's --dump-dom with --virtual-time-budget is enough here (as for
// TestBrowserGRPCWeb): the page has no interaction, and a state change is
// seen by loading it again, so no driver dependency (chromedp) is needed.
func TestDashboardBrowser(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	users := startBackends(t, "users", 2)
	canary := startBackends(t, "canary", 1)
	m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: main, address: 127.0.0.1:0, reflection: true}
drain_timeout: 5s
routes:
  - name: empty
    match: {method: /grpc.testing.TestService/EmptyCall}
    clusters: [{name: users, weight: 90}, {name: canary, weight: 10}]
  - {name: rest, match: {prefix: /}, cluster: users}
clusters:
  - {name: users, endpoints: %s}
  - {name: canary, endpoints: %s}
`, addrs(users), addrs(canary)))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	// Traffic while the page is looked at, some of it failing, so the
	// figures and charts have something to show.
	canary[0].FailEvery(3, codes.Unavailable)
	ctx, stop := context.WithCancel(context.Background())
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, _ = client.EmptyCall(cctx, &testpb.Empty{})
			_, _ = client.UnaryCall(cctx, &testpb.SimpleRequest{ResponseSize: 64})
			cancel()
		}
	}()
	defer func() { stop(); traffic.Wait() }()

	// A dashboard that was open for a few seconds: its polls (one per
	// second here) leave the snapshots the rates come from.
	poll := time.NewTicker(time.Second)
	for range 5 {
		dashboardJSON(t, m.Admin)
		<-poll.C
	}
	poll.Stop()

	url := "http://" + m.Admin + "/"
	dom := string(runChromium(t, bin, "--dump-dom", url))
	for _, want := range []string{
		`data-listener="main"`, `data-route="empty"`, `data-route="rest"`, "users 90%", "canary 10%",
		`data-cluster="users"`, `data-cluster="canary"`, "<svg", "calls/s",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if i, j := strings.Index(dom, `data-route="empty"`), strings.Index(dom, `data-route="rest"`); i > j {
		t.Error("routes not in match order")
	}
	for _, b := range append(users, canary...) {
		if !regexp.MustCompile(`data-endpoint="` + regexp.QuoteMeta(b.Addr) + `" data-state="serving"`).MatchString(dom) {
			t.Errorf("endpoint %s not shown serving", b.Addr)
		}
	}
	if !regexp.MustCompile(`<polyline class="rate" points="[0-9.]+,[0-9.]+ [0-9.]+`).MatchString(dom) {
		t.Error("no rate chart drawn")
	}
	if !regexp.MustCompile(`<td class="num err">[0-9.]+%</td>`).MatchString(dom) {
		t.Error("no error rate shown for the failing canary")
	}

	// Eject one endpoint: its health turns NOT_SERVING.
	ejected := users[1]
	ejected.SetServing(false)
	testkit.WaitFor(t, 10*time.Second, "meshd to see the endpoint ejected", func() bool {
		return strings.Contains(dashboardJSON(t, m.Admin), `"State": "ejected"`)
	})
	dom = string(runChromium(t, bin, "--dump-dom", url))
	if !regexp.MustCompile(`data-endpoint="` + regexp.QuoteMeta(ejected.Addr) + `" data-state="ejected"`).MatchString(dom) {
		t.Errorf("page does not show %s ejected", ejected.Addr)
	}
	if !strings.Contains(dom, "NOT_SERVING") || !strings.Contains(dom, "1/2 serving") {
		t.Error("page lacks the ejection's reason (NOT_SERVING) or the cluster's 1/2 serving")
	}

	shot := filepath.Join(t.TempDir(), "dashboard.png")
	runChromium(t, bin, "--screenshot="+shot, "--window-size=1100,640", "--hide-scrollbars", url)
	fi, err := os.Stat(shot)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("screenshot: %v", err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, fi.Size())
	if dst := os.Getenv("MESHD_DASHBOARD_SCREENSHOT"); dst != "" {
		b, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(dst, b, 0o644)
		}
		if err != nil {
			t.Fatalf("MESHD_DASHBOARD_SCREENSHOT: %v", err)
		}
		t.Logf("screenshot copied to %s", dst)
	}
}

// dashboardJSON fetches /dashboard.json, as the page's poll does.
func dashboardJSON(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("dashboard.json: %d %v", resp.StatusCode, err)
	}
	return string(b)
}
