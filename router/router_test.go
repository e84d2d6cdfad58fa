package router_test

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

// Route and header-condition builders, so tables read like configs.

func exactM(m string, h ...config.HeaderMatch) config.Match {
	return config.Match{Method: m, Headers: h}
}
func serviceM(s string, h ...config.HeaderMatch) config.Match {
	return config.Match{Service: s, Headers: h}
}
func prefixM(p string, h ...config.HeaderMatch) config.Match {
	return config.Match{Prefix: p, Headers: h}
}
func route(name string, m config.Match) config.Route {
	return config.Route{Name: name, Match: m, Cluster: "c-" + name}
}

func hExact(name, v string) config.HeaderMatch  { return config.HeaderMatch{Name: name, Exact: &v} }
func hPrefix(name, v string) config.HeaderMatch { return config.HeaderMatch{Name: name, Prefix: &v} }
func hRegex(name, v string) config.HeaderMatch  { return config.HeaderMatch{Name: name, Regex: &v} }
func hPresent(name string, v bool) config.HeaderMatch {
	return config.HeaderMatch{Name: name, Present: &v}
}
func not(h config.HeaderMatch) config.HeaderMatch { h.Invert = true; return h }

func mustNew(t testing.TB, routes ...config.Route) *router.Table {
	t.Helper()
	tb, err := router.New(routes)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tb
}

// firstMatched is the route Explain says wins.
func firstMatched(vs []router.Verdict) *router.Route {
	for _, v := range vs {
		if v.Matched {
			return v.Route
		}
	}
	return nil
}

func name(r *router.Route) string {
	if r == nil {
		return "<nil>"
	}
	return r.Name
}

func TestLookupFirstMatchWins(t *testing.T) {
	t.Parallel()
	type call struct {
		method string
		md     router.Headers // nil: no metadata at all
		want   string         // route name, "" for no route
	}
	tenant := func(kv ...string) metadata.MD { return metadata.Pairs(kv...) }
	tests := []struct {
		name   string
		routes []config.Route
		calls  []call
	}{
		{
			name: "exact after a catch-all prefix never wins",
			routes: []config.Route{
				route("all", prefixM("/")),
				route("get", exactM("/users.v1.Users/Get")),
				route("users", serviceM("users.v1.Users")),
			},
			calls: []call{
				{"/users.v1.Users/Get", nil, "all"},
				{"/users.v1.Users/List", metadata.MD{}, "all"},
				{"/x.Y/Z", nil, "all"},
				{"", nil, ""}, // not even "/"
			},
		},
		{
			name: "service before exact wins",
			routes: []config.Route{
				route("users", serviceM("users.v1.Users")),
				route("get", exactM("/users.v1.Users/Get")),
			},
			calls: []call{
				{"/users.v1.Users/Get", nil, "users"},
				{"/users.v1.Users/List", nil, "users"},
				{"/users.v1.Orders/Get", nil, ""},
			},
		},
		{
			name: "exact, service, prefix in file order",
			routes: []config.Route{
				route("get", exactM("/users.v1.Users/Get")),
				route("users", serviceM("users.v1.Users")),
				route("users-ns", prefixM("/users.")),
			},
			calls: []call{
				{"/users.v1.Users/Get", nil, "get"},
				{"/users.v1.Users/List", nil, "users"},
				{"/users.v2.Users/Get", nil, "users-ns"},
				{"/orders.v1.Orders/Get", nil, ""},
			},
		},
		{
			name: "an earlier prefix beats a later, longer one",
			routes: []config.Route{
				route("short", prefixM("/a.")),
				route("long", prefixM("/a.B/")),
				route("other", prefixM("/b.")),
			},
			calls: []call{
				{"/a.B/C", nil, "short"},
				{"/b.C/D", nil, "other"},
				{"/c.D/E", nil, ""},
			},
		},
		{
			name: "header-conditioned routes fall through to later ones",
			routes: []config.Route{
				route("get-acme", exactM("/users.v1.Users/Get", hExact("x-tenant", "acme"))),
				route("users-canary", serviceM("users.v1.Users", hPresent("x-canary", true))),
				route("ns-eu", prefixM("/users.", hRegex("x-region", "eu-.*"))),
				route("get", exactM("/users.v1.Users/Get")),
				route("all", prefixM("/")),
			},
			calls: []call{
				{"/users.v1.Users/Get", tenant("x-tenant", "acme"), "get-acme"},
				{"/users.v1.Users/Get", tenant("x-tenant", "other", "x-canary", "1"), "users-canary"},
				{"/users.v1.Users/Get", tenant("x-tenant", "other", "x-region", "eu-west-1"), "ns-eu"},
				{"/users.v1.Users/Get", tenant("x-tenant", "other", "x-region", "us-east-1"), "get"},
				{"/users.v1.Users/Get", nil, "get"},
				{"/users.v1.Users/Get", metadata.MD(nil), "get"},
				{"/users.v1.Users/List", nil, "all"},
				{"/users.v1.Users/List", tenant("x-canary", ""), "users-canary"},
			},
		},
		{
			name: "a later exact route beats a later prefix when an earlier service route's headers fail",
			routes: []config.Route{
				route("svc-debug", serviceM("a.B", hExact("x-debug", "1"))),
				route("exact", exactM("/a.B/C")),
				route("prefix", prefixM("/a.")),
				route("svc", serviceM("a.B")),
			},
			calls: []call{
				{"/a.B/C", nil, "exact"},
				{"/a.B/C", tenant("x-debug", "1"), "svc-debug"},
				{"/a.B/D", nil, "prefix"},
				{"/a.Z/D", nil, "prefix"},
			},
		},
		{
			name: "same method twice: first whose headers hold",
			routes: []config.Route{
				route("canary", exactM("/a.B/C", hExact("x-canary", "1"))),
				route("stable", exactM("/a.B/C")),
				route("never", exactM("/a.B/C")),
			},
			calls: []call{
				{"/a.B/C", tenant("x-canary", "1"), "canary"},
				{"/a.B/C", tenant("x-canary", "0"), "stable"},
			},
		},
		{
			name: "service matches its own methods only",
			routes: []config.Route{
				route("ab", serviceM("a.B")),
			},
			calls: []call{
				{"/a.B/C", nil, "ab"},
				{"/a.B/C/D", nil, "ab"},
				{"/a.BC/D", nil, ""},
				{"/a.B", nil, ""},
				{"a.B/C", nil, ""},
				{"/a.B.C/D", nil, ""},
				{"//a.B/C", nil, ""},
			},
		},
		{
			name: "exact is exact",
			routes: []config.Route{
				route("get", exactM("/a.B/Get")),
			},
			calls: []call{
				{"/a.B/Get", nil, "get"},
				{"/a.B/GetX", nil, ""},
				{"/a.B/get", nil, ""},
				{"a.B/Get", nil, ""},
			},
		},
		{
			name:   "empty table",
			routes: nil,
			calls:  []call{{"/a.B/C", nil, ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tb := mustNew(t, tt.routes...)
			for _, c := range tt.calls {
				got := tb.Lookup(c.method, c.md)
				want := c.want
				if want == "" {
					want = "<nil>"
				}
				if name(got) != want {
					t.Errorf("Lookup(%q, %v) = %s, want %s", c.method, c.md, name(got), want)
				}
				if e := firstMatched(tb.Explain(c.method, c.md)); e != got {
					t.Errorf("Explain(%q, %v) picks %s, Lookup %s", c.method, c.md, name(e), name(got))
				}
			}
		})
	}
}

func TestHeaderMatchers(t *testing.T) {
	t.Parallel()
	multi := metadata.MD{"x-tenant": {"beta", "acme"}, "x-empty": {""}}
	tests := []struct {
		name string
		h    config.HeaderMatch
		md   router.Headers
		want bool
	}{
		{"exact hits the second value", hExact("x-tenant", "acme"), multi, true},
		{"exact misses every value", hExact("x-tenant", "acm"), multi, false},
		{"exact is case sensitive", hExact("x-tenant", "ACME"), multi, false},
		{"exact empty value", hExact("x-empty", ""), multi, true},
		{"exact on a missing key", hExact("x-missing", ""), multi, false},
		{"exact on nil metadata", hExact("x-tenant", "acme"), nil, false},
		{"exact on typed nil metadata", hExact("x-tenant", "acme"), metadata.MD(nil), false},
		{"prefix hits one value", hPrefix("x-tenant", "ac"), multi, true},
		{"prefix whole value", hPrefix("x-tenant", "beta"), multi, true},
		{"prefix misses", hPrefix("x-tenant", "cme"), multi, false},
		{"empty prefix needs a value", hPrefix("x-missing", ""), multi, false},
		{"empty prefix on a present key", hPrefix("x-empty", ""), multi, true},
		{"regex is anchored (no substring match)", hRegex("x-tenant", "cm"), multi, false},
		{"regex whole value", hRegex("x-tenant", "a.m."), multi, true},
		{"regex alternation is anchored as a whole", hRegex("x-tenant", "b|acme"), multi, true},
		{"regex alternation no partial", hRegex("x-tenant", "bet|acm"), multi, false},
		{"regex matching empty", hRegex("x-empty", "a*"), multi, true},
		{"regex on a missing key", hRegex("x-missing", ".*"), multi, false},
		{"regex on nil metadata", hRegex("x-tenant", ".*"), nil, false},
		{"present true", hPresent("x-tenant", true), multi, true},
		{"present true with an empty value", hPresent("x-empty", true), multi, true},
		{"present true missing", hPresent("x-missing", true), multi, false},
		{"present false missing", hPresent("x-missing", false), multi, true},
		{"present false present", hPresent("x-tenant", false), multi, false},
		{"present false nil metadata", hPresent("x-tenant", false), nil, true},
		{"present true nil metadata", hPresent("x-tenant", true), nil, false},
		{"invert exact: some value matches", not(hExact("x-tenant", "acme")), multi, false},
		{"invert exact: none matches", not(hExact("x-tenant", "gamma")), multi, true},
		{"invert exact: missing key", not(hExact("x-missing", "a")), multi, true},
		{"invert exact: nil metadata", not(hExact("x-tenant", "acme")), nil, true},
		{"invert prefix", not(hPrefix("x-tenant", "be")), multi, false},
		{"invert regex", not(hRegex("x-tenant", "z.*")), multi, true},
		{"invert present true", not(hPresent("x-tenant", true)), multi, false},
		{"invert present false", not(hPresent("x-missing", false)), multi, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := router.NewHeaderMatcher(tt.h)
			if err != nil {
				t.Fatalf("NewHeaderMatcher: %v", err)
			}
			if got := m(tt.md); got != tt.want {
				t.Errorf("matcher(%v) = %v, want %v", tt.md, got, tt.want)
			}
			// The same condition on a route gives the same answer.
			tb := mustNew(t, route("r", prefixM("/", tt.h)))
			if got := tb.Lookup("/a.B/C", tt.md) != nil; got != tt.want {
				t.Errorf("Lookup with the condition = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewHeaderMatcherRejects(t *testing.T) {
	t.Parallel()
	a := "a"
	tests := []struct {
		name string
		h    config.HeaderMatch
	}{
		{"no name", config.HeaderMatch{Exact: &a}},
		{"uppercase name", hExact("X-Tenant", "a")},
		{"no condition", config.HeaderMatch{Name: "x"}},
		{"two conditions", config.HeaderMatch{Name: "x", Exact: &a, Prefix: &a}},
		{"bad regex", hRegex("x", "a(")},
		{"unbalanced regex that is valid once wrapped", hRegex("x", "x)|(.*")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if m, err := router.NewHeaderMatcher(tt.h); err == nil || m != nil {
				t.Fatalf("NewHeaderMatcher(%+v) = (matcher: %v), %v; want an error", tt.h, m != nil, err)
			} else if !strings.HasPrefix(err.Error(), "router: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if _, err := router.New([]config.Route{route("r", prefixM("/", tt.h))}); err == nil {
				t.Errorf("New accepted a route with %+v", tt.h)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		route config.Route
		want  string
	}{
		{"no cluster", config.Route{Name: "r", Match: prefixM("/")}, `route "r" has no cluster`},
		{"no selector", config.Route{Name: "r", Cluster: "c"}, `route "r" has no method, service or prefix`},
		{"weights overflow", config.Route{Name: "r", Match: prefixM("/"), Clusters: []config.WeightedCluster{
			{Name: "a", Weight: 1 << 31}, {Name: "b", Weight: 1 << 31},
		}}, `cluster weights add up to 4294967296`},
		{"bad header", config.Route{Name: "r", Match: prefixM("/", hRegex("x", "(")), Cluster: "c"}, `route "r": header "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := router.New([]config.Route{tt.route})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "router: ") {
				t.Errorf("New() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestRouteFields(t *testing.T) {
	t.Parallel()
	retry := &config.Retry{Attempts: 2}
	tb := mustNew(t,
		route("first", exactM("/a.B/C")),
		config.Route{
			Name:           "second",
			Match:          serviceM("a.B"),
			Clusters:       []config.WeightedCluster{{Name: "x", Weight: 3}, {Name: "y", Weight: 1}},
			Timeout:        config.Duration(2 * time.Second),
			MaxGRPCTimeout: config.Duration(time.Minute),
			Retry:          retry,
		},
	)
	rs := tb.Routes()
	if len(rs) != 2 {
		t.Fatalf("Routes() has %d routes", len(rs))
	}
	if r := rs[0]; r.Index != 0 || len(r.Clusters) != 1 || r.Clusters[0] != (config.WeightedCluster{Name: "c-first", Weight: 1}) {
		t.Errorf("single-cluster route: %+v", r)
	}
	r := rs[1]
	if r.Name != "second" || r.Index != 1 || r.Timeout != 2*time.Second || r.MaxGRPCTimeout != time.Minute || r.Retry != retry || r.Match.Service != "a.B" {
		t.Errorf("route fields: %+v", r)
	}
	if got := tb.Lookup("/a.B/D", nil); got != r {
		t.Errorf("Lookup returned %v, want the second route", got)
	}
}

func TestPickCluster(t *testing.T) {
	t.Parallel()
	t.Run("90/10 over uniform random numbers", func(t *testing.T) {
		t.Parallel()
		tb := mustNew(t, config.Route{Name: "split", Match: prefixM("/"), Clusters: []config.WeightedCluster{
			{Name: "stable", Weight: 90}, {Name: "canary", Weight: 10},
		}})
		r := tb.Routes()[0]
		rng := rand.New(rand.NewPCG(1, 2))
		const n = 100000
		counts := map[string]int{}
		for range n {
			counts[r.PickCluster(rng.Uint32())]++
		}
		if len(counts) != 2 {
			t.Fatalf("picked %v", counts)
		}
		for name, wantPct := range map[string]float64{"stable": 90, "canary": 10} {
			pct := 100 * float64(counts[name]) / n
			if pct < wantPct-1 || pct > wantPct+1 {
				t.Errorf("%s got %.2f%% of calls, want %v%% ± 1", name, pct, wantPct)
			}
		}
	})
	t.Run("boundaries", func(t *testing.T) {
		t.Parallel()
		tb := mustNew(t, config.Route{Name: "split", Match: prefixM("/"), Clusters: []config.WeightedCluster{
			{Name: "a", Weight: 1}, {Name: "b", Weight: 2}, {Name: "c", Weight: 3},
		}})
		r := tb.Routes()[0]
		want := []string{"a", "b", "b", "c", "c", "c"}
		for rnd := range uint32(12) {
			if got := r.PickCluster(rnd); got != want[rnd%6] {
				t.Errorf("PickCluster(%d) = %s, want %s", rnd, got, want[rnd%6])
			}
		}
		if got := r.PickCluster(^uint32(0)); got != want[(1<<32-1)%6] {
			t.Errorf("PickCluster(max) = %s", got)
		}
	})
	t.Run("largest allowed total", func(t *testing.T) {
		t.Parallel()
		tb := mustNew(t, config.Route{Name: "split", Match: prefixM("/"), Clusters: []config.WeightedCluster{
			{Name: "a", Weight: 1 << 31}, {Name: "b", Weight: 1<<31 - 1},
		}})
		r := tb.Routes()[0]
		if got := r.PickCluster(1<<31 - 1); got != "a" {
			t.Errorf("PickCluster(2^31-1) = %s, want a", got)
		}
		if got := r.PickCluster(1 << 31); got != "b" {
			t.Errorf("PickCluster(2^31) = %s, want b", got)
		}
	})
	t.Run("single cluster ignores rnd", func(t *testing.T) {
		t.Parallel()
		r := mustNew(t, route("one", prefixM("/"))).Routes()[0]
		for _, rnd := range []uint32{0, 1, 1 << 31, ^uint32(0)} {
			if got := r.PickCluster(rnd); got != "c-one" {
				t.Errorf("PickCluster(%d) = %s", rnd, got)
			}
		}
	})
	t.Run("zero weights count as one", func(t *testing.T) {
		t.Parallel()
		r := mustNew(t, config.Route{Name: "split", Match: prefixM("/"), Clusters: []config.WeightedCluster{
			{Name: "a"}, {Name: "b"},
		}}).Routes()[0]
		if a, b := r.PickCluster(0), r.PickCluster(1); a != "a" || b != "b" {
			t.Errorf("PickCluster(0), (1) = %s, %s", a, b)
		}
	})
}

func TestExplain(t *testing.T) {
	t.Parallel()
	tb := mustNew(t,
		route("get", exactM("/users.v1.Users/Get")),
		route("acme", serviceM("users.v1.Users", hExact("x-tenant", "acme"))),
		route("not-beta", serviceM("users.v1.Users", not(hPrefix("x-tenant", "be")))),
		route("orders", prefixM("/orders.")),
		route("list", exactM("/users.v1.Users/List")),
		route("all", prefixM("/")),
		route("after", serviceM("users.v1.Users")),
	)
	type verdict struct {
		matched bool
		reason  string
	}
	tests := []struct {
		name   string
		method string
		md     router.Headers
		want   []verdict
	}{
		{"headers decide", "/users.v1.Users/List", metadata.Pairs("x-tenant", "beta", "x-tenant", "bravo"), []verdict{
			{false, "method /users.v1.Users/List is not /users.v1.Users/Get"},
			{false, `header x-tenant: want exact "acme", got ["beta" "bravo"]`},
			{false, `header x-tenant: want not prefix "be", got ["beta" "bravo"]`},
			{false, "path /users.v1.Users/List lacks prefix /orders."},
			{true, "matched"},
			{true, "matched"},
			{true, "matched"},
		}},
		{"no metadata", "/users.v1.Users/Get", nil, []verdict{
			{true, "matched"},
			{false, `header x-tenant: want exact "acme", got []`},
			{true, "matched"},
			{false, "path /users.v1.Users/Get lacks prefix /orders."},
			{false, "method /users.v1.Users/Get is not /users.v1.Users/List"},
			{true, "matched"},
			{true, "matched"},
		}},
		{"other service", "/orders.v1.Orders/Put", metadata.MD{}, []verdict{
			{false, "method /orders.v1.Orders/Put is not /users.v1.Users/Get"},
			{false, `service "orders.v1.Orders" is not "users.v1.Users"`},
			{false, `service "orders.v1.Orders" is not "users.v1.Users"`},
			{true, "matched"},
			{false, "method /orders.v1.Orders/Put is not /users.v1.Users/List"},
			{true, "matched"},
			{false, `service "orders.v1.Orders" is not "users.v1.Users"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vs := tb.Explain(tt.method, tt.md)
			if len(vs) != len(tt.want) {
				t.Fatalf("Explain returned %d verdicts, want %d", len(vs), len(tt.want))
			}
			for i, v := range vs {
				if v.Route != tb.Routes()[i] {
					t.Errorf("verdict %d is for route %s", i, name(v.Route))
				}
				if v.Matched != tt.want[i].matched || v.Reason != tt.want[i].reason {
					t.Errorf("verdict %d (%s) = %v %q, want %v %q", i, v.Route.Name, v.Matched, v.Reason, tt.want[i].matched, tt.want[i].reason)
				}
			}
			if got, want := firstMatched(vs), tb.Lookup(tt.method, tt.md); got != want {
				t.Errorf("Explain's first match %s, Lookup %s", name(got), name(want))
			}
		})
	}
	t.Run("present reasons", func(t *testing.T) {
		t.Parallel()
		tb := mustNew(t, route("p", prefixM("/", hPresent("x-a", true))), route("q", prefixM("/", not(hPresent("x-a", false)))),
			route("r", prefixM("/", hRegex("x-a", "v[0-9]+"))))
		vs := tb.Explain("/a.B/C", nil)
		for i, want := range []string{
			`header x-a: want present=true, got []`,
			`header x-a: want not present=false, got []`,
			`header x-a: want regex "v[0-9]+", got []`,
		} {
			if vs[i].Matched || vs[i].Reason != want {
				t.Errorf("verdict %d = %v %q, want %q", i, vs[i].Matched, vs[i].Reason, want)
			}
		}
	})
}

// TestLookupAllocs checks the data-path promise: Lookup allocates nothing,
// with gRPC metadata and regex conditions too. Not parallel: AllocsPerRun
// counts every allocation in the process.
func TestLookupAllocs(t *testing.T) {
	tb := mustNew(t,
		route("get-acme", exactM("/users.v1.Users/Get", hExact("x-tenant", "acme"))),
		route("users-eu", serviceM("users.v1.Users", hRegex("x-region", "eu-(west|central)-[0-9]+"))),
		route("not-internal", prefixM("/users.", not(hPrefix("x-internal", "yes")), hPresent("x-debug", false))),
		route("get", exactM("/users.v1.Users/Get")),
		route("orders", serviceM("orders.v1.Orders")),
	)
	md := metadata.Pairs("x-tenant", "other", "x-region", "eu-west-3", "x-internal", "yes-please", "x-region", "us-east-1")
	tests := []struct {
		name   string
		method string
		md     router.Headers
		want   string
	}{
		{"exact with metadata", "/users.v1.Users/Get", metadata.Pairs("x-tenant", "acme"), "get-acme"},
		{"regex over multi-valued metadata", "/users.v1.Users/Get", md, "users-eu"},
		{"regex miss, then prefix and present", "/users.v1.Users/List", metadata.Pairs("x-region", "us-east-1"), "not-internal"},
		{"fall through to exact", "/users.v1.Users/Get", metadata.Pairs("x-internal", "yes"), "get"},
		{"service, nil metadata", "/orders.v1.Orders/Put", nil, "orders"},
		{"miss", "/nothing.Here/Nope", md, "<nil>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *router.Route
			allocs := testing.AllocsPerRun(1000, func() { got = tb.Lookup(tt.method, tt.md) })
			if name(got) != tt.want {
				t.Fatalf("Lookup = %s, want %s", name(got), tt.want)
			}
			if allocs != 0 {
				t.Errorf("Lookup allocates %v times per call, want 0", allocs)
			}
		})
	}
}

func TestPseudoHeaders(t *testing.T) {
	t.Parallel()
	re := `/users\.v[0-9]+\.Users/Get.*`
	host := "api.example.com"
	tbl, err := router.New([]config.Route{
		{Name: "by-path", Match: config.Match{Prefix: "/", Headers: []config.HeaderMatch{{Name: router.PathHeader, Regex: &re}}}, Cluster: "a"},
		{Name: "by-authority", Match: config.Match{Prefix: "/", Headers: []config.HeaderMatch{{Name: router.AuthorityHeader, Exact: &host}}}, Cluster: "b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tbl.MatchesPseudo() {
		t.Fatal("MatchesPseudo false for a table testing :path")
	}
	for _, tc := range []struct {
		method, authority, want string
	}{
		{"/users.v1.Users/GetUser", "x", "by-path"},
		{"/users.v1.Users/ListUsers", host, "by-authority"},
		{"/users.v1.Users/ListUsers", "other", ""},
	} {
		md := metadata.Pairs(router.PathHeader, tc.method, router.AuthorityHeader, tc.authority)
		got := ""
		if r := tbl.Lookup(tc.method, md); r != nil {
			got = r.Name
		}
		if got != tc.want {
			t.Errorf("%s @%s: route %q, want %q", tc.method, tc.authority, got, tc.want)
		}
	}
	plain, _ := router.New([]config.Route{{Name: "x", Match: config.Match{Prefix: "/"}, Cluster: "a"}})
	if plain.MatchesPseudo() {
		t.Error("MatchesPseudo true for a table without pseudo header matches")
	}
}
