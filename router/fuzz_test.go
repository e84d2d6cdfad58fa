package router_test

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

// fuzzRoutes is a fixed table mixing every selector kind and every header
// condition over two keys, in an order where indexing could go wrong:
// conditioned routes before unconditioned ones of each kind, and kinds
// interleaved.
func fuzzRoutes() []config.Route {
	return []config.Route{
		route("get-acme", exactM("/users.v1.Users/Get", hExact("x-a", "acme"))),
		route("users-re", serviceM("users.v1.Users", hRegex("x-a", "eu-(west|central)-[0-9]+"), hPresent("x-b", false))),
		route("ns-prefix", prefixM("/users.", hPrefix("x-b", "canary"))),
		route("get-not-beta", exactM("/users.v1.Users/Get", not(hPrefix("x-a", "be")))),
		route("orders-b", serviceM("orders.v1.Orders", hPresent("x-b", true))),
		route("list", exactM("/users.v1.Users/List")),
		route("users", serviceM("users.v1.Users", not(hExact("x-b", "")))),
		route("orders-empty-b", prefixM("/orders.", hRegex("x-b", "a*"))),
		route("orders-ns", prefixM("/orders.")),
		route("slash-x", prefixM("/x", not(hRegex("x-a", ".*[0-9]")))),
		route("get", exactM("/users.v1.Users/Get")),
		route("a-b", serviceM("a.B")),
		route("all-with-a", prefixM("/", hPresent("x-a", true))),
		route("catchall-users", prefixM("/users")),
	}
}

// refMatches is a naive reading of the config docs: a route takes a call
// when its selector matches the path and every header condition holds.
func refMatches(m config.Match, method string, md metadata.MD) bool {
	var path bool
	switch {
	case m.Method != "":
		path = method == m.Method
	case m.Service != "":
		path = strings.HasPrefix(method, "/"+m.Service+"/")
	default:
		path = strings.HasPrefix(method, m.Prefix)
	}
	if !path {
		return false
	}
	for _, h := range m.Headers {
		if !refHeader(h, md[h.Name]) {
			return false
		}
	}
	return true
}

// refHeader evaluates one condition against a key's values.
func refHeader(h config.HeaderMatch, vals []string) bool {
	var ok bool
	if h.Present != nil {
		ok = (len(vals) > 0) == *h.Present
	}
	for _, v := range vals {
		switch {
		case h.Exact != nil:
			ok = ok || v == *h.Exact
		case h.Prefix != nil:
			ok = ok || strings.HasPrefix(v, *h.Prefix)
		case h.Regex != nil:
			ok = ok || regexp.MustCompile("^(?:"+*h.Regex+")$").MatchString(v)
		}
	}
	return ok != h.Invert
}

// refLookup scans routes in file order.
func refLookup(routes []*router.Route, method string, md metadata.MD) *router.Route {
	for _, r := range routes {
		if refMatches(r.Match, method, md) {
			return r
		}
	}
	return nil
}

// fuzzMD builds metadata from the fuzzer's values; mask bit 0 and 1 add the
// two x-a values, bit 2 adds x-b, bit 3 passes no metadata at all.
func fuzzMD(mask uint8, a1, a2, b string) (router.Headers, metadata.MD) {
	if mask&8 != 0 {
		return nil, nil
	}
	md := metadata.MD{}
	if mask&1 != 0 {
		md["x-a"] = append(md["x-a"], a1)
	}
	if mask&2 != 0 {
		md["x-a"] = append(md["x-a"], a2)
	}
	if mask&4 != 0 {
		md["x-b"] = append(md["x-b"], b)
	}
	return md, md
}

func FuzzLookup(f *testing.F) {
	for _, s := range []struct {
		method    string
		a1, a2, b string
		mask      uint8
	}{
		{"/users.v1.Users/Get", "acme", "", "", 1},
		{"/users.v1.Users/Get", "beta", "eu-west-1", "", 3},
		{"/users.v1.Users/Get", "beta", "", "", 1},
		{"/users.v1.Users/List", "eu-central-22", "", "canary-1", 1},
		{"/users.v1.Users/Other", "", "", "canary", 4},
		{"/users.v1.Users/Other", "", "", "", 4},
		{"/orders.v1.Orders/Put", "", "", "aaa", 4},
		{"/orders.v1.Orders", "", "", "b", 4},
		{"/xylophone", "v1", "v", "", 3},
		{"/a.B/C", "", "", "", 8},
		{"/a.B", "x", "", "", 1},
		{"/users", "", "", "", 0},
		{"", "", "", "", 0},
		{"//", "", "", "", 0},
		{"/users.v1.Users/Get/extra", "acme", "", "", 1},
	} {
		f.Add(s.method, s.a1, s.a2, s.b, s.mask)
	}
	tb, err := router.New(fuzzRoutes())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, a1, a2, b string, mask uint8) {
		hdr, md := fuzzMD(mask, a1, a2, b)
		got := tb.Lookup(method, hdr)
		if want := refLookup(tb.Routes(), method, md); got != want {
			t.Fatalf("Lookup(%q, %v) = %s, reference %s", method, md, name(got), name(want))
		}
		if e := firstMatched(tb.Explain(method, hdr)); e != got {
			t.Fatalf("Explain(%q, %v) picks %s, Lookup %s", method, md, name(e), name(got))
		}
	})
}

// FuzzHeaderMatcher compiles arbitrary conditions: no panics, an error
// exactly when the condition is invalid, and a matcher that agrees with the
// reference reading of the docs.
func FuzzHeaderMatcher(f *testing.F) {
	f.Add("x-tenant", uint8(0), "acme", false, "acme", "beta", uint8(2))
	f.Add("x-tenant", uint8(1), "ac", true, "acme", "", uint8(1))
	f.Add("x-tenant", uint8(2), "eu-(west|central)-[0-9]+", false, "eu-west-1", "us", uint8(2))
	f.Add("x-tenant", uint8(2), "x)|(.*", false, "anything", "", uint8(1))
	f.Add("x-tenant", uint8(2), "a(", false, "a(", "", uint8(1))
	f.Add("x-tenant", uint8(2), `\pN+`, true, "123", "", uint8(1))
	f.Add("x-tenant", uint8(3), "", false, "", "", uint8(0))
	f.Add("x-tenant", uint8(3), "yes", true, "v", "", uint8(1))
	f.Add("X-Tenant", uint8(0), "acme", false, "acme", "", uint8(1))
	f.Add("", uint8(0), "acme", false, "acme", "", uint8(1))
	f.Add("x-tenant", uint8(4), "acme", false, "acme", "", uint8(1))
	f.Add("x-tenant", uint8(5), "acme", false, "acme", "", uint8(1))
	f.Add("x-\xff", uint8(0), "", false, "", "", uint8(1))
	f.Fuzz(func(t *testing.T, name string, kind uint8, pattern string, invert bool, v1, v2 string, n uint8) {
		h := config.HeaderMatch{Name: name, Invert: invert}
		present := pattern != ""
		switch kind % 6 {
		case 0:
			h.Exact = &pattern
		case 1:
			h.Prefix = &pattern
		case 2:
			h.Regex = &pattern
		case 3:
			h.Present = &present
		case 4: // two conditions
			h.Exact, h.Regex = &pattern, &pattern
		case 5: // none
		}
		valid := name != "" && name == strings.ToLower(name) && kind%6 < 4
		if kind%6 == 2 {
			_, rawErr := regexp.Compile(pattern)
			_, anchoredErr := regexp.Compile("^(?:" + pattern + ")$")
			valid = valid && rawErr == nil && anchoredErr == nil
		}
		m, err := router.NewHeaderMatcher(h)
		if valid != (err == nil) {
			t.Fatalf("NewHeaderMatcher(%+v) error = %v, want valid=%v", h, err, valid)
		}
		if (m == nil) != (err != nil) {
			t.Fatalf("NewHeaderMatcher returned matcher=%v with error %v", m != nil, err)
		}
		if err != nil {
			if h.Check() == nil {
				t.Fatalf("config accepts %+v that the router rejects: %v", h, err)
			}
			return
		}
		if err := h.Check(); err != nil {
			t.Fatalf("config rejects %+v that the router accepts: %v", h, err)
		}
		vals := []string{v1, v2}[:n%3]
		for _, md := range []metadata.MD{{name: vals}, nil, {"other": {v1}}} {
			want := refHeader(h, md[name])
			if got := m(md); got != want {
				t.Fatalf("matcher(%+v)(%v) = %v, reference %v", h, md, got, want)
			}
		}
		if got, want := m(nil), refHeader(h, nil); got != want {
			t.Fatalf("matcher(%+v)(nil) = %v, reference %v", h, got, want)
		}
	})
}
