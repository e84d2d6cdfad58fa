package authz_test

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/authz"
)

// metadata.MD is what the listener hands Decide.
var _ authz.Headers = metadata.MD(nil)

const (
	unary  = "/grpc.testing.TestService/UnaryCall"
	stream = "/grpc.testing.TestService/StreamingOutputCall"
	admin  = "/admin.Admin/Reset"
)

// l7 is an L7 rule for source with one allow permission p.
func l7(id, source string, perms ...authz.Permission) authz.Rule {
	return authz.Rule{ID: id, Source: source, Permissions: perms}
}

func l4(id, source string, a authz.Action) authz.Rule {
	return authz.Rule{ID: id, Source: source, Action: a}
}

func allowIf(h ...authz.HeaderRule) authz.Permission {
	return authz.Permission{Action: authz.Allow, Headers: h}
}

func md(kv ...string) metadata.MD { return metadata.Pairs(kv...) }

func TestDecide(t *testing.T) {
	t.Parallel()
	const A, D = authz.Allow, authz.Deny
	allow := func(rule, reason string, perm int) authz.Decision {
		return authz.Decision{Allow: true, Rule: rule, Reason: reason, Permission: perm}
	}
	deny := func(rule, reason string, perm int) authz.Decision {
		return authz.Decision{Allow: false, Rule: rule, Reason: reason, Permission: perm}
	}
	hdr := func(h authz.HeaderRule) []authz.Rule {
		return []authz.Rule{l7("r", "web", allowIf(h))}
	}
	tests := []struct {
		name   string
		rules  []authz.Rule
		def    authz.Action
		source string
		method string
		h      metadata.MD
		want   authz.Decision
	}{
		// Precedence and sources.
		{"empty table default deny", nil, D, "web", unary, nil, deny("default", "default", -1)},
		{"empty table default allow", nil, A, "web", unary, nil, allow("default", "default", -1)},
		{"unnamed source gets default", []authz.Rule{l4("w", "web", A)}, D, "billing", unary, nil, deny("default", "default", -1)},
		{"L4 allow", []authz.Rule{l4("w", "web", A)}, D, "web", unary, nil, allow("w", "intention", -1)},
		{"L4 deny", []authz.Rule{l4("w", "web", D)}, A, "web", unary, nil, deny("w", "intention", -1)},
		{"exact beats wildcard listed after", []authz.Rule{l4("w", "web", A), l4("any", "*", D)}, D, "web", unary, nil, allow("w", "intention", -1)},
		{"exact beats wildcard listed first (computed precedence)", []authz.Rule{l4("any", "*", D), l4("w", "web", A)}, D, "web", unary, nil, allow("w", "intention", -1)},
		{"wildcard for other sources", []authz.Rule{l4("w", "web", A), l4("any", "*", D)}, A, "billing", unary, nil, deny("any", "intention", -1)},
		{"explicit precedence wins over computed", []authz.Rule{
			{ID: "w", Source: "web", Action: A, Precedence: 5},
			{ID: "any", Source: "*", Action: D, Precedence: 6},
		}, A, "web", unary, nil, deny("any", "intention", -1)},
		{"first matching source wins though a later rule allows", []authz.Rule{l4("w1", "web", D), l4("w2", "web", A)}, A, "web", unary, nil, deny("w1", "intention", -1)},
		{"L7 rule with no match does not fall through to a later rule", []authz.Rule{
			l7("w", "web", authz.Permission{Action: A, PathExact: admin}),
			l4("any", "*", A),
		}, D, "web", unary, nil, deny("w", "default", -1)},
		{"unauthenticated ignores named rules", []authz.Rule{l4("w", "web", A)}, D, "", unary, nil, deny("default", "default", -1)},
		{"unauthenticated matches wildcard", []authz.Rule{l4("w", "web", D), l4("any", "*", A)}, D, "", unary, nil, allow("any", "intention", -1)},
		{"source named * is not a wildcard caller", []authz.Rule{l4("w", "web", A)}, D, "*", unary, nil, deny("default", "default", -1)},

		// L7 paths.
		{"path exact", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathExact: unary})}, D, "web", unary, nil, allow("r", "permission", 0)},
		{"path exact other method", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathExact: unary})}, D, "web", stream, nil, deny("r", "default", -1)},
		{"path prefix", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathPrefix: "/grpc.testing.TestService/"})}, D, "web", stream, nil, allow("r", "permission", 0)},
		{"path prefix miss", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathPrefix: "/grpc.testing.TestService/"})}, D, "web", admin, nil, deny("r", "default", -1)},
		{"path regex full match", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathRegex: `/grpc\.testing\.TestService/\w+Call`})}, D, "web", unary, nil, allow("r", "permission", 0)},
		{"path regex is anchored at the end", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathRegex: `/grpc\.testing\.TestService/Unary`})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"path regex is anchored at the start", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathRegex: `TestService/UnaryCall`})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"path regex alternation stays anchored", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathRegex: `/x|/grpc.*Unary`})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"permissions tried in order: deny first", []authz.Rule{l7("r", "web",
			authz.Permission{Action: D, PathExact: admin},
			authz.Permission{Action: A, PathPrefix: "/"},
		)}, D, "web", admin, nil, deny("r", "permission", 0)},
		{"permissions tried in order: second matches", []authz.Rule{l7("r", "web",
			authz.Permission{Action: D, PathExact: admin},
			authz.Permission{Action: A, PathPrefix: "/"},
		)}, D, "web", unary, nil, allow("r", "permission", 1)},
		{"L7 no match default allow", []authz.Rule{l7("r", "web", authz.Permission{Action: D, PathExact: admin})}, A, "web", unary, nil, allow("r", "default", -1)},
		{"L7 no match default deny", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathExact: admin})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"L7 rule ignores its own Action", []authz.Rule{{ID: "r", Source: "web", Action: A, Permissions: []authz.Permission{{Action: A, PathExact: admin}}}}, D, "web", unary, nil, deny("r", "default", -1)},
		{"permission without conditions matches all", []authz.Rule{l7("r", "web", authz.Permission{Action: A})}, D, "web", admin, nil, allow("r", "permission", 0)},

		// Methods.
		{"methods POST", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathPrefix: "/", Methods: []string{"GET", "POST"}})}, D, "web", unary, nil, allow("r", "permission", 0)},
		{"methods GET never match gRPC", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathPrefix: "/", Methods: []string{"GET"}})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"all conditions must hold", []authz.Rule{l7("r", "web", authz.Permission{Action: A, PathExact: unary, Methods: []string{"POST"},
			Headers: []authz.HeaderRule{{Name: "x-tenant", Exact: "a"}}})}, D, "web", unary, md("x-tenant", "b"), deny("r", "default", -1)},

		// Headers.
		{"present", hdr(authz.HeaderRule{Name: "x-debug", Present: true}), D, "web", unary, md("x-debug", ""), allow("r", "permission", 0)},
		{"present missing", hdr(authz.HeaderRule{Name: "x-debug", Present: true}), D, "web", unary, md("other", "1"), deny("r", "default", -1)},
		{"present inverted missing", hdr(authz.HeaderRule{Name: "x-debug", Present: true, Invert: true}), D, "web", unary, nil, allow("r", "permission", 0)},
		{"present inverted there", hdr(authz.HeaderRule{Name: "x-debug", Present: true, Invert: true}), D, "web", unary, md("x-debug", "1"), deny("r", "default", -1)},
		{"exact", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"exact mismatch", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue"}), D, "web", unary, md("x-tenant", "bluer"), deny("r", "default", -1)},
		{"exact is case sensitive", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue"}), D, "web", unary, md("x-tenant", "Blue"), deny("r", "default", -1)},
		{"exact missing", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue"}), D, "web", unary, nil, deny("r", "default", -1)},
		{"rule name upper case", hdr(authz.HeaderRule{Name: "X-Tenant", Exact: "blue"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"prefix", hdr(authz.HeaderRule{Name: "x-tenant", Prefix: "bl"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"prefix mismatch", hdr(authz.HeaderRule{Name: "x-tenant", Prefix: "lu"}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"suffix", hdr(authz.HeaderRule{Name: "x-tenant", Suffix: "ue"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"suffix mismatch", hdr(authz.HeaderRule{Name: "x-tenant", Suffix: "bl"}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"contains", hdr(authz.HeaderRule{Name: "x-tenant", Contains: "lu"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"contains mismatch", hdr(authz.HeaderRule{Name: "x-tenant", Contains: "ul"}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"regex whole value", hdr(authz.HeaderRule{Name: "x-tenant", Regex: "b[a-z]+"}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"regex partial does not match", hdr(authz.HeaderRule{Name: "x-tenant", Regex: "lu"}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"invert exact", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "red", Invert: true}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"invert exact equal", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue", Invert: true}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"invert exact missing still fails", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "red", Invert: true}), D, "web", unary, nil, deny("r", "default", -1)},
		{"invert regex", hdr(authz.HeaderRule{Name: "x-tenant", Regex: "r.d", Invert: true}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"ignore case exact", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "BLue", IgnoreCase: true}), D, "web", unary, md("x-tenant", "bLUE"), allow("r", "permission", 0)},
		{"ignore case prefix", hdr(authz.HeaderRule{Name: "x-tenant", Prefix: "BL", IgnoreCase: true}), D, "web", unary, md("x-tenant", "blue"), allow("r", "permission", 0)},
		{"ignore case suffix", hdr(authz.HeaderRule{Name: "x-tenant", Suffix: "UE", IgnoreCase: true}), D, "web", unary, md("x-tenant", "bLuE"), allow("r", "permission", 0)},
		{"ignore case contains", hdr(authz.HeaderRule{Name: "x-tenant", Contains: "Lu", IgnoreCase: true}), D, "web", unary, md("x-tenant", "BLUE"), allow("r", "permission", 0)},
		{"ignore case contains mismatch", hdr(authz.HeaderRule{Name: "x-tenant", Contains: "Ul", IgnoreCase: true}), D, "web", unary, md("x-tenant", "BLUE"), deny("r", "default", -1)},
		{"ignore case and invert", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "BLUE", IgnoreCase: true, Invert: true}), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},
		{"ignore case does nothing for regex", hdr(authz.HeaderRule{Name: "x-tenant", Regex: "blue", IgnoreCase: true}), D, "web", unary, md("x-tenant", "BLUE"), deny("r", "default", -1)},
		{"multi-valued: any value matches", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue"}), D, "web", unary, md("x-tenant", "red", "x-tenant", "blue"), allow("r", "permission", 0)},
		{"multi-valued: invert holds only if no value matches", hdr(authz.HeaderRule{Name: "x-tenant", Exact: "blue", Invert: true}), D, "web", unary, md("x-tenant", "red", "x-tenant", "blue"), deny("r", "default", -1)},
		{"multi-valued deny cannot be slipped past", []authz.Rule{l7("r", "web",
			authz.Permission{Action: D, Headers: []authz.HeaderRule{{Name: "x-role", Exact: "intern"}}},
			authz.Permission{Action: A},
		)}, D, "web", unary, md("x-role", "intern", "x-role", "admin"), deny("r", "permission", 0)},
		{"all header rules must hold", hdr2(
			authz.HeaderRule{Name: "x-tenant", Exact: "blue"},
			authz.HeaderRule{Name: "x-debug", Present: true},
		), D, "web", unary, md("x-tenant", "blue"), deny("r", "default", -1)},

		// Fail closed on what meshd cannot check.
		{"unsupported allow never matches", []authz.Rule{l7("r", "web", authz.Permission{Action: A, Unsupported: "jwt"})}, D, "web", unary, nil, deny("r", "default", -1)},
		{"unsupported deny matches on the rest", []authz.Rule{l7("r", "web", authz.Permission{Action: D, PathPrefix: "/", Unsupported: "jwt"})}, A, "web", unary, nil, deny("r", "permission", 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tab, err := authz.Compile("api", tc.rules, tc.def)
			if err != nil {
				t.Fatal(err)
			}
			if got := tab.Decide(tc.source, tc.method, tc.h); got != tc.want {
				t.Errorf("Decide(%q, %q, %v) = %+v, want %+v", tc.source, tc.method, tc.h, got, tc.want)
			}
		})
	}
}

func hdr2(h ...authz.HeaderRule) []authz.Rule {
	return []authz.Rule{l7("r", "web", allowIf(h...))}
}

// TestDecideNil: a nil table (nothing known yet) and nil headers.
func TestDecideNil(t *testing.T) {
	t.Parallel()
	var tab *authz.Table
	if d := tab.Decide("web", unary, nil); d.Allow || d.Reason != authz.ReasonNoTable {
		t.Errorf("nil table: %+v", d)
	}
	tab, err := authz.Compile("api", []authz.Rule{l7("r", "web", allowIf(authz.HeaderRule{Name: "x", Present: true, Invert: true}))}, authz.Deny)
	if err != nil {
		t.Fatal(err)
	}
	if d := tab.Decide("web", unary, nil); !d.Allow {
		t.Errorf("nil headers are absent headers: %+v", d)
	}
}

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		rules []authz.Rule
		want  []string // substrings of the error
	}{
		{"bad path regex", []authz.Rule{l4("ok", "web", authz.Allow),
			l7("bad-path", "billing", authz.Permission{Action: authz.Allow, PathRegex: "/a(b"})},
			[]string{`rule bad-path (source "billing")`, "permission 0", "path_regex", "/a(b"}},
		{"bad header regex", []authz.Rule{l7("", "web", allowIf(authz.HeaderRule{Name: "x-a", Exact: "1"}), allowIf(authz.HeaderRule{Name: "x-b", Regex: "[z-a]"}))},
			[]string{"rule rules[0]", "permission 1", `header 0 ("x-b")`, "regex"}},
		{"two header kinds", []authz.Rule{l7("h", "web", allowIf(authz.HeaderRule{Name: "x", Exact: "1", Prefix: "1"}))},
			[]string{"rule h", "exactly one of"}},
		{"no header kind", []authz.Rule{l7("h", "web", allowIf(authz.HeaderRule{Name: "x"}))},
			[]string{"rule h", "exactly one of"}},
		{"no header name", []authz.Rule{l7("h", "web", allowIf(authz.HeaderRule{Present: true}))},
			[]string{"rule h", "no name"}},
		{"two paths", []authz.Rule{l7("p", "web", authz.Permission{PathExact: "/a", PathPrefix: "/"})},
			[]string{"rule p", "more than one of path"}},
		{"relative path", []authz.Rule{l7("p", "web", authz.Permission{PathPrefix: "pkg.S/"})},
			[]string{"rule p", `path_prefix "pkg.S/"`}},
		{"no source", []authz.Rule{{ID: "s", Action: authz.Allow}}, []string{"rule s", "no source"}},
		{"bad action", []authz.Rule{{ID: "s", Source: "web", Action: 7}}, []string{"rule s", "invalid action"}},
		{"every bad rule named", []authz.Rule{
			l7("one", "a", authz.Permission{PathRegex: "("}),
			l7("two", "b", authz.Permission{PathRegex: ")"}),
		}, []string{"rule one", "rule two"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tab, err := authz.Compile("api", tc.rules, authz.Deny)
			if err == nil {
				t.Fatalf("Compile succeeded: %+v", tab.Dump())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if _, err := authz.Compile("api", nil, 3); err == nil {
		t.Error("Compile accepted default action 3")
	}
}

// TestCompileKeepsInput: Compile copies rules, so the caller may change
// them afterwards without changing the table; Dump shows decision order
// with computed precedences and redacts credential headers.
func TestCompileKeepsInput(t *testing.T) {
	t.Parallel()
	rules := []authz.Rule{
		l4("any", "*", authz.Deny),
		l7("w", "web", authz.Permission{Action: authz.Allow, PathPrefix: "/", Headers: []authz.HeaderRule{
			{Name: "Authorization", Exact: "Bearer s3cret"},
			{Name: "x-tenant", Exact: "blue"},
		}}),
	}
	tab, err := authz.Compile("api", rules, authz.Deny)
	if err != nil {
		t.Fatal(err)
	}
	rules[1].Permissions[0].PathPrefix = "/nothing"
	rules[1].Source = "billing"
	if d := tab.Decide("web", unary, md("authorization", "Bearer s3cret", "x-tenant", "blue")); !d.Allow {
		t.Errorf("changing the input changed the table: %+v", d)
	}
	if rules[0].Precedence != 0 || rules[1].Permissions[0].Headers[0].Exact != "Bearer s3cret" {
		t.Errorf("Compile changed its input: %+v", rules)
	}
	b, err := json.Marshal(tab.Dump())
	if err != nil {
		t.Fatal(err)
	}
	dump := string(b)
	for _, w := range []string{`"destination":"api"`, `"default_action":"deny"`, `"id":"w"`, `"precedence":9`, `"precedence":8`, `"exact":"blue"`, `"exact":"[redacted]"`} {
		if !strings.Contains(dump, w) {
			t.Errorf("dump lacks %s: %s", w, dump)
		}
	}
	if strings.Contains(dump, "s3cret") {
		t.Errorf("dump leaks a credential: %s", dump)
	}
	if i, j := strings.Index(dump, `"id":"w"`), strings.Index(dump, `"id":"any"`); i > j {
		t.Errorf("dump not in decision order: %s", dump)
	}
	if tab.Default() != authz.Deny || tab.Destination() != "api" || tab.Len() != 2 {
		t.Errorf("Default %v Destination %q Len %d", tab.Default(), tab.Destination(), tab.Len())
	}
}

func TestActionText(t *testing.T) {
	t.Parallel()
	for _, a := range []authz.Action{authz.Allow, authz.Deny} {
		b, err := a.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back authz.Action
		if err := back.UnmarshalText(b); err != nil || back != a {
			t.Errorf("%v round trip: %v, %v", a, back, err)
		}
	}
	var a authz.Action
	if err := a.UnmarshalText([]byte("Allow")); err == nil {
		t.Error(`UnmarshalText accepted "Allow"`)
	}
}

// TestDecideTCP: an opaque connection is decided at L4; an L7 rule, whose
// permissions cannot see it, denies it whatever its permissions say.
func TestDecideTCP(t *testing.T) {
	t.Parallel()
	everything := authz.Permission{Action: authz.Allow}
	for _, tc := range []struct {
		name   string
		rules  []authz.Rule
		def    authz.Action
		source string
		allow  bool
		reason string
	}{
		{"L4 allow", []authz.Rule{l4("r", "web", authz.Allow)}, authz.Deny, "web", true, authz.ReasonIntention},
		{"L4 deny", []authz.Rule{l4("r", "web", authz.Deny)}, authz.Allow, "web", false, authz.ReasonIntention},
		{"no rule, default deny", []authz.Rule{l4("r", "web", authz.Allow)}, authz.Deny, "intruder", false, authz.ReasonDefault},
		{"no rule, default allow", nil, authz.Allow, "intruder", true, authz.ReasonDefault},
		{"L7 rule denies, even one allowing every call", []authz.Rule{l7("r", "web", everything)}, authz.Allow, "web", false, authz.ReasonL7OnTCP},
		{"exact source before wildcard", []authz.Rule{l4("any", "*", authz.Deny), l4("r", "web", authz.Allow)}, authz.Deny, "web", true, authz.ReasonIntention},
		{"unauthenticated matches wildcard only", []authz.Rule{l4("r", "web", authz.Allow), l4("any", "*", authz.Deny)}, authz.Allow, "", false, authz.ReasonIntention},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tab, err := authz.Compile("api", tc.rules, tc.def)
			if err != nil {
				t.Fatal(err)
			}
			d := tab.DecideTCP(tc.source)
			if d.Allow != tc.allow || d.Reason != tc.reason {
				t.Errorf("DecideTCP(%q) = %+v, want allow %v reason %s", tc.source, d, tc.allow, tc.reason)
			}
		})
	}
	var nilTab *authz.Table
	if d := nilTab.DecideTCP("web"); d.Allow || d.Reason != authz.ReasonNoTable {
		t.Errorf("nil table: %+v, want a denial", d)
	}
}
