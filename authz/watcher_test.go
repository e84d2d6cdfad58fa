package authz_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/authz"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
)

// run runs w for the life of the test and waits for its first table.
func run(t *testing.T, w *authz.Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("no table within 20s; status %+v", w.Status())
	}
	if w.Table() == nil {
		t.Fatal("Ready closed without a table")
	}
}

func setEntry(t *testing.T, c *api.Client, e api.ConfigEntry) {
	t.Helper()
	if ok, _, err := c.ConfigEntries().Set(e, nil); err != nil || !ok {
		t.Fatalf("write %s %s: ok=%v err=%v", e.GetKind(), e.GetName(), ok, err)
	}
}

func grpcDefaults(t *testing.T, c *api.Client, name string) {
	t.Helper()
	setEntry(t, c, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: name, Protocol: "grpc"})
}

func intentions(t *testing.T, c *api.Client, dest string, sources ...*api.SourceIntention) {
	t.Helper()
	setEntry(t, c, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dest, Sources: sources})
}

// decides polls until the watcher's table decides source's call as want
// (Allow and Reason) and returns how long that took.
func decides(t *testing.T, w *authz.Watcher, source, method string, h authz.Headers, allow bool, reason string) time.Duration {
	t.Helper()
	var d authz.Decision
	took, ok := time.Duration(0), false
	start := time.Now()
	ok = testkit.Poll(10*time.Second, 0, func() bool {
		d = w.Table().Decide(source, method, h)
		return d.Allow == allow && d.Reason == reason
	})
	took = time.Since(start)
	if !ok {
		t.Fatalf("Decide(%q, %q) = %+v after 10s, want allow=%v reason=%s", source, method, d, allow, reason)
	}
	return took
}

// TestWatcherConsul follows a real agent's intentions for "api": L4 rules,
// a change, an L7 entry, and FromConsul's round trip.
func TestWatcherConsul(t *testing.T) {
	t.Parallel()
	agent := sharedAgent(t)
	c := agent.Client
	const dest = "api"
	grpcDefaults(t, c, dest)
	intentions(t, c, dest,
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny},
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
	)
	log, _ := testLogger(t)
	w := authz.NewWatcher(c, dest, authz.Allow, log, discovery.WithWaitTime(10*time.Second))
	run(t, w)

	tab := w.Table()
	for _, tc := range []struct {
		source string
		allow  bool
		rule   string
	}{{"web", true, "web->api"}, {"billing", false, "*->api"}, {"", false, "*->api"}} {
		if d := tab.Decide(tc.source, unary, nil); d.Allow != tc.allow || d.Rule != tc.rule || d.Reason != authz.ReasonIntention {
			t.Errorf("Decide(%q) = %+v, want allow=%v by %s", tc.source, d, tc.allow, tc.rule)
		}
	}
	// Status shows the answer synced once deliver has returned, just after
	// Ready.
	testkit.WaitFor(t, 5*time.Second, "status synced", func() bool {
		st := w.Status()
		return st.Synced && st.Healthy && st.Index > 0
	})

	// FromConsul keeps Consul's order and precedence, and compiles to the
	// table the watcher holds.
	m, _, err := c.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{dest}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rules := authz.FromConsul(m[dest])
	if len(rules) != 2 || rules[0].Source != "web" || rules[1].Source != "*" ||
		rules[0].Precedence != m[dest][0].Precedence || rules[1].Precedence != m[dest][1].Precedence ||
		rules[0].Precedence <= rules[1].Precedence || rules[0].Action != authz.Allow || rules[1].Action != authz.Deny {
		t.Errorf("FromConsul = %+v", rules)
	}
	again, err := authz.Compile(dest, rules, authz.Allow)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.Dump(), tab.Dump()) {
		t.Errorf("round trip:\n got %+v\nwant %+v", again.Dump(), tab.Dump())
	}

	// A change meshd does not use (a description) moves the index but does
	// not rebuild the table.
	index := w.Status().Index
	intentions(t, c, dest,
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny, Description: "no one else"},
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
	)
	testkit.WaitFor(t, 10*time.Second, "the index to move", func() bool { return w.Status().Index > index })
	if w.Table() != tab {
		t.Error("the table was rebuilt for an answer that did not change")
	}

	// A deny for web replaces the allow.
	intentions(t, c, dest,
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny},
		&api.SourceIntention{Name: "web", Action: api.IntentionActionDeny},
	)
	took := decides(t, w, "web", unary, nil, false, authz.ReasonIntention)
	t.Logf("deny for web applied after %v", took)
	if took > 2*time.Second {
		t.Errorf("a change took %v to apply", took)
	}

	// An L7 entry: web may call Unary* with x-tenant: blue and nothing
	// else; EmptyCall is denied by a permission; GET never matches gRPC.
	intentions(t, c, dest,
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny},
		&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{
				PathPrefix: "/grpc.testing.TestService/Unary",
				Header:     []api.IntentionHTTPHeaderPermission{{Name: "x-tenant", Exact: "blue"}},
			}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{
				PathPrefix: "/grpc.testing.TestService/", Methods: []string{"GET"},
			}},
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{
				PathExact: "/grpc.testing.TestService/EmptyCall",
			}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{
				PathRegex: `/grpc\.health\.v1\.Health/\w+`,
				Header:    []api.IntentionHTTPHeaderPermission{{Name: "x-debug", Present: true, Invert: true}},
			}},
		}},
	)
	decides(t, w, "web", unary, md("x-tenant", "blue"), true, authz.ReasonPermission)
	tab = w.Table()
	for _, tc := range []struct {
		method string
		h      authz.Headers
		want   authz.Decision
	}{
		{unary, md("x-tenant", "blue"), authz.Decision{Allow: true, Rule: "web->api", Reason: authz.ReasonPermission, Permission: 0}},
		{unary, md("x-tenant", "red"), authz.Decision{Allow: true, Rule: "web->api", Reason: authz.ReasonDefault, Permission: -1}},
		{stream, md("x-tenant", "blue"), authz.Decision{Allow: true, Rule: "web->api", Reason: authz.ReasonDefault, Permission: -1}},
		{"/grpc.testing.TestService/EmptyCall", nil, authz.Decision{Allow: false, Rule: "web->api", Reason: authz.ReasonPermission, Permission: 2}},
		{"/grpc.health.v1.Health/Check", nil, authz.Decision{Allow: true, Rule: "web->api", Reason: authz.ReasonPermission, Permission: 3}},
		{"/grpc.health.v1.Health/Check", md("x-debug", "1"), authz.Decision{Allow: true, Rule: "web->api", Reason: authz.ReasonDefault, Permission: -1}},
	} {
		if got := tab.Decide("web", tc.method, tc.h); got != tc.want {
			t.Errorf("Decide(web, %s, %v) = %+v, want %+v", tc.method, tc.h, got, tc.want)
		}
	}
	if d := tab.Decide("billing", unary, md("x-tenant", "blue")); d.Allow || d.Rule != "*->api" {
		t.Errorf("billing: %+v", d)
	}
}

// TestWatcherConsulOutage: while the agent is down the last table keeps
// serving; after a restart the (dev) agent has forgotten every intention,
// and the table follows it to the default.
func TestWatcherConsulOutage(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client
	const dest = "orders"
	intentions(t, c, dest, &api.SourceIntention{Name: "web", Action: api.IntentionActionAllow})
	log, _ := testLogger(t)
	w := authz.NewWatcher(c, dest, authz.Deny, log,
		discovery.WithWaitTime(5*time.Second), discovery.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	run(t, w)
	tab := w.Table()
	if d := tab.Decide("web", unary, nil); !d.Allow {
		t.Fatalf("before the outage: %+v", d)
	}

	agent.Stop(t)
	testkit.WaitFor(t, 20*time.Second, "the watch to notice the outage", func() bool {
		st := w.Status()
		return !st.Healthy && st.Failures > 0
	})
	if got := w.Table(); got != tab {
		t.Fatalf("the table changed while Consul was away: %p, want %p", got, tab)
	}
	if d := w.Table().Decide("web", unary, nil); !d.Allow {
		t.Errorf("during the outage: %+v", d)
	}

	agent.Restart(t)
	testkit.WaitFor(t, 30*time.Second, "the watch to recover", func() bool { return w.Status().Healthy })
	testkit.WaitFor(t, 10*time.Second, "the default-only table", func() bool { return w.Table() != tab })
	if d := w.Table().Decide("web", unary, nil); d.Allow || d.Rule != authz.DefaultRule || d.Reason != authz.ReasonDefault {
		t.Errorf("after the restart: %+v", d)
	}
	if n := w.Table().Len(); n != 0 {
		t.Errorf("after the restart the table has %d rules", n)
	}
	if st := w.Status(); !st.Synced || st.Failures != 0 || st.LastError != "" {
		t.Errorf("status after recovery %+v", st)
	}
}

// logs collects a watcher's log lines for the test to read, and shows them
// with the test's output.
type logs struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return l.b.Write(p)
}

func (l *logs) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func testLogger(t *testing.T) (*slog.Logger, *logs) {
	l := &logs{t: t}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// TestWatcherCompileError: intentions Consul accepts but meshd cannot
// compile (Go's RE2 refuses a Perl lookahead) are logged once, and the last
// good table keeps serving until a good answer comes.
func TestWatcherCompileError(t *testing.T) {
	t.Parallel()
	agent := sharedAgent(t)
	c := agent.Client
	const dest = "inventory"
	grpcDefaults(t, c, dest)
	intentions(t, c, dest, &api.SourceIntention{Name: "web", Action: api.IntentionActionAllow})
	log, lines := testLogger(t)
	w := authz.NewWatcher(c, dest, authz.Deny, log)
	run(t, w)
	good := w.Table()

	bad := func(desc string) {
		intentions(t, c, dest, &api.SourceIntention{Name: "web", Description: desc, Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: `/(?!admin).*`}},
		}})
	}
	bad("")
	testkit.WaitFor(t, 10*time.Second, "the compile error in Status", func() bool {
		return strings.Contains(w.Status().LastError, "path_regex")
	})
	index := w.Status().Index
	bad("same error, new index")
	testkit.WaitFor(t, 10*time.Second, "the index to move", func() bool { return w.Status().Index > index })
	if w.Table() != good {
		t.Error("a table that does not compile replaced the last good one")
	}
	if n := lines.count("do not compile"); n != 1 {
		t.Errorf("compile error logged %d times, want once", n)
	}
	if st := w.Status(); !st.Synced || !st.Healthy {
		t.Errorf("status with a compile error %+v", st)
	}

	intentions(t, c, dest, &api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	decides(t, w, "web", unary, nil, false, authz.ReasonIntention)
	testkit.WaitFor(t, 5*time.Second, "the error to clear", func() bool { return w.Status().LastError == "" })
}
