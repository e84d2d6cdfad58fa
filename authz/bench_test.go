package authz_test

import (
	"testing"

	"github.com/meshd/meshd/authz"
)

// realisticRules is ten intentions of a busy service: L4 allows and denies,
// L7 rules with path prefixes, a path regex and header rules, and a
// wildcard deny.
func realisticRules() []authz.Rule {
	return []authz.Rule{
		l4("i-billing", "billing", authz.Allow),
		l4("i-legacy", "legacy", authz.Deny),
		l7("i-web", "web",
			authz.Permission{Action: authz.Deny, PathPrefix: "/admin."},
			authz.Permission{Action: authz.Allow, PathRegex: `/grpc\.testing\.TestService/(Unary|Streaming\w*)Call`,
				Methods: []string{"POST"},
				Headers: []authz.HeaderRule{
					{Name: "x-tenant", Regex: "[a-z]+-(blue|green)"},
					{Name: "x-debug", Present: true, Invert: true},
				}},
			authz.Permission{Action: authz.Allow, PathPrefix: "/grpc.health.v1.Health/"},
		),
		l7("i-mobile", "mobile-bff",
			authz.Permission{Action: authz.Allow, PathExact: "/shop.Cart/Get", Headers: []authz.HeaderRule{{Name: "x-app-version", Prefix: "7.", IgnoreCase: true}}},
		),
		l4("i-search", "search", authz.Allow),
		l4("i-reports", "reports", authz.Allow),
		l7("i-ops", "ops",
			authz.Permission{Action: authz.Allow, PathRegex: `/admin\.Admin/(Get|List)\w*`},
		),
		l4("i-batch", "batch", authz.Deny),
		l4("i-cron", "cron", authz.Allow),
		l4("i-any", "*", authz.Deny),
	}
}

// BenchmarkDecide: the worst common case, a caller whose L7 rule matches on
// its second permission after a path regex and two header rules.
func BenchmarkDecide(b *testing.B) {
	tab, err := authz.Compile("api", realisticRules(), authz.Deny)
	if err != nil {
		b.Fatal(err)
	}
	h := md("x-tenant", "shop-green", "user-agent", "grpc-go/1.85")
	if d := tab.Decide("web", unary, h); !d.Allow || d.Permission != 1 {
		b.Fatalf("setup: %+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		tab.Decide("web", unary, h)
	}
}

// BenchmarkDecideL4: the common cheap case, an L4 rule.
func BenchmarkDecideL4(b *testing.B) {
	tab, err := authz.Compile("api", realisticRules(), authz.Deny)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		tab.Decide("billing", unary, nil)
	}
}

// TestDecideAllocs keeps Decide allocation-free on the data path.
func TestDecideAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	tab, err := authz.Compile("api", realisticRules(), authz.Deny)
	if err != nil {
		t.Fatal(err)
	}
	h := md("x-tenant", "shop-green", "x-app-version", "7.1")
	for _, src := range []string{"web", "mobile-bff", "ops", "billing", "nobody", ""} {
		if n := testing.AllocsPerRun(100, func() { tab.Decide(src, unary, h) }); n != 0 {
			t.Errorf("Decide(%q) allocates %v times", src, n)
		}
	}
}
