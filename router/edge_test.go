package router_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

func on(r config.Route, listeners ...string) config.Route { r.Listeners = listeners; return r }
func host(m config.Match, a string) config.Match          { m.Authority = a; return m }

func TestForListener(t *testing.T) {
	t.Parallel()
	tb := mustNew(t,
		on(route("admin", serviceM("admin.v1.Admin")), "internal"),
		on(route("users-public", serviceM("users.v1.Users")), "public"),
		route("users", serviceM("users.v1.Users")),
		on(route("both", prefixM("/")), "public", "internal"),
	)
	if !tb.ListenerScoped() {
		t.Fatal("ListenerScoped = false")
	}
	tests := []struct {
		listener, method, want string
	}{
		{"internal", "/admin.v1.Admin/Reset", "admin"},
		{"public", "/admin.v1.Admin/Reset", "both"},
		{"other", "/admin.v1.Admin/Reset", "<nil>"},
		{"", "/admin.v1.Admin/Reset", "<nil>"},
		{"public", "/users.v1.Users/Get", "users-public"},
		{"internal", "/users.v1.Users/Get", "users"},
		{"other", "/users.v1.Users/Get", "users"},
		{"internal", "/x.Y/Z", "both"},
	}
	for _, tt := range tests {
		t.Run(tt.listener+tt.method, func(t *testing.T) {
			t.Parallel()
			if got := tb.ForListener(tt.listener).Lookup(tt.method, nil); name(got) != tt.want {
				t.Errorf("ForListener(%q).Lookup(%s) = %s, want %s", tt.listener, tt.method, name(got), tt.want)
			}
			if tt.listener == "" {
				return // explain's "" is any listener, not none
			}
			// explain says the same, with the listener's reason.
			vs := tb.ExplainCall(router.Call{Method: tt.method, Listener: tt.listener})
			if got := firstMatched(vs); name(got) != tt.want {
				t.Errorf("ExplainCall = %s, want %s", name(got), tt.want)
			}
		})
	}
	vs := tb.ExplainCall(router.Call{Method: "/admin.v1.Admin/Reset", Listener: "public"})
	if !strings.Contains(vs[0].Reason, `listener "public" is not one of the route's ["internal"]`) {
		t.Errorf("reason = %q", vs[0].Reason)
	}
	// No route names a listener: every listener sees the same table.
	plain := mustNew(t, route("a", prefixM("/")))
	if plain.ListenerScoped() || plain.ForListener("x") != plain {
		t.Error("a table without listener rules must be its own view")
	}
}

func TestAuthority(t *testing.T) {
	t.Parallel()
	tb := mustNew(t,
		route("api-8443", host(serviceM("s.S"), "api.example.com:8443")),
		route("api", host(serviceM("s.S"), "api.example.com")),
		route("wild", host(serviceM("s.S"), "*.example.com")),
		route("v6", host(serviceM("s.S"), "[::1]:9000")),
		route("fallback", prefixM("/")),
	)
	tests := []struct{ authority, want string }{
		{"api.example.com", "api"},
		{"API.Example.COM", "api"},
		{"api.example.com:443", "api"},
		{"api.example.com.", "api"},
		{"api.example.com:8443", "api-8443"},
		{"www.example.com", "wild"},
		{"a.b.example.com:80", "wild"},
		{"WWW.EXAMPLE.com", "wild"},
		{"example.com", "fallback"},
		{".example.com", "fallback"},
		{"evil-example.com", "fallback"},
		{"api.example.com.evil.org", "fallback"},
		{"[::1]:9000", "v6"},
		{"[::1]:9001", "fallback"},
		{"", "fallback"},
	}
	for _, tt := range tests {
		t.Run(tt.authority, func(t *testing.T) {
			t.Parallel()
			got := tb.Match("/s.S/M", tt.authority, nil)
			if name(got) != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.authority, name(got), tt.want)
			}
			if e := firstMatched(tb.ExplainCall(router.Call{Method: "/s.S/M", Authority: tt.authority})); e != got {
				t.Errorf("ExplainCall = %s, Match = %s", name(e), name(got))
			}
		})
	}
	vs := tb.ExplainCall(router.Call{Method: "/s.S/M", Authority: "x.org"})
	if !strings.Contains(vs[2].Reason, `authority "x.org" does not match "*.example.com"`) {
		t.Errorf("reason = %q", vs[2].Reason)
	}
}

func TestEditsCompiled(t *testing.T) {
	t.Parallel()
	plain := route("plain", prefixM("/"))
	r := route("edited", serviceM("s.S"))
	r.RequestHeaders = &config.HeaderRules{Set: map[string]string{"x-b": "2", "x-a": "1"}, Add: map[string]string{"x-c": "3"}, Remove: []string{"x-d"}}
	r.ResponseHeaders = &config.HeaderRules{Remove: []string{"x-backend-host"}}
	jwtFwd := route("jwt-forward", serviceM("t.T"))
	jwtFwd.JWT = &config.RouteJWT{Provider: "fwd"}
	jwtDrop := route("jwt-drop", serviceM("u.U"))
	jwtDrop.JWT = &config.RouteJWT{Provider: "drop"}
	tb, err := router.New([]config.Route{plain, r, jwtFwd, jwtDrop},
		router.WithJWTProviders([]config.JWTProvider{{Name: "fwd", Forward: true}, {Name: "drop"}}))
	if err != nil {
		t.Fatal(err)
	}
	rs := tb.Routes()
	if rs[0].Edits != nil || rs[2].Edits != nil {
		t.Errorf("routes without rules must have nil Edits: %+v %+v", rs[0].Edits, rs[2].Edits)
	}
	want := []string{`request remove x-d`, `request set x-a: "1"`, `request set x-b: "2"`, `request add x-c: "3"`, `response remove x-backend-host`}
	if got := rs[1].DescribeEdits(); !slices.Equal(got, want) {
		t.Errorf("DescribeEdits = %q, want %q", got, want)
	}
	if got := rs[3].DescribeEdits(); !slices.Equal(got, []string{"request remove authorization"}) || rs[3].JWT != "drop" {
		t.Errorf("jwt route without forward: %q", got)
	}
}

func TestMatchAuthorityListenerAllocs(t *testing.T) {
	tb := mustNew(t,
		on(route("admin", host(serviceM("admin.v1.Admin"), "*.internal")), "internal"),
		route("api", host(serviceM("users.v1.Users"), "API.example.com")),
		route("wild", host(prefixM("/users."), "*.example.com:443")),
	)
	md := metadata.Pairs("x-tenant", "acme")
	var got *router.Route
	allocs := testing.AllocsPerRun(1000, func() {
		got = tb.ForListener("public").Match("/users.v1.Users/Get", "www.Example.com:443", md)
	})
	if name(got) != "wild" || allocs != 0 {
		t.Fatalf("Match = %s with %v allocs, want wild with 0", name(got), allocs)
	}
	allocs = testing.AllocsPerRun(1000, func() {
		got = tb.ForListener("internal").Match("/admin.v1.Admin/Get", "db.internal", md)
	})
	if name(got) != "admin" || allocs != 0 {
		t.Fatalf("Match = %s with %v allocs, want admin with 0", name(got), allocs)
	}
}
