package router

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
)

// This file holds the edge parts of routing: routes limited to listeners
// (one table view per listener, compiled once per config), host rules
// (match.authority) and header rules compiled into engine.HeaderEdits.

// ForListener returns the table a call arriving on listener name sees:
// the routes open to every listener and those naming it, in file order.
// When no route names a listener it is t itself. A listener that no route
// names (or "") sees the routes open to every listener. It does not
// allocate or lock.
func (t *Table) ForListener(name string) *Table {
	if t.views == nil {
		return t
	}
	if v, ok := t.views[name]; ok {
		return v
	}
	return t.open
}

// ListenerScoped reports whether some route is limited to listeners, i.e.
// whether ForListener can return anything but t.
func (t *Table) ListenerScoped() bool { return t.views != nil }

// compileViews builds the per-listener views when a route names listeners.
func (t *Table) compileViews() {
	named := map[string]bool{}
	for _, r := range t.routes {
		for _, l := range r.Listeners {
			named[l] = true
		}
	}
	if len(named) == 0 {
		return
	}
	view := func(keep func(*Route) bool) *Table {
		var rs []*Route
		for _, r := range t.routes {
			if keep(r) {
				rs = append(rs, r)
			}
		}
		return index(rs)
	}
	t.views = make(map[string]*Table, len(named))
	for l := range named {
		t.views[l] = view(func(r *Route) bool { return len(r.Listeners) == 0 || slices.Contains(r.Listeners, l) })
	}
	t.open = view(func(r *Route) bool { return len(r.Listeners) == 0 })
}

// authorityMatcher is a compiled match.authority. The zero value matches
// every call.
type authorityMatcher struct {
	rule   string // as configured, for explain
	host   string // exact host, or the suffix after "*" (".example.com")
	port   string // "": any port
	wild   bool
	active bool
}

func compileAuthority(a string) authorityMatcher {
	if a == "" {
		return authorityMatcher{}
	}
	m := authorityMatcher{rule: a, host: a, active: true}
	if h, p, err := net.SplitHostPort(a); err == nil {
		m.host, m.port = h, p
	}
	m.host = strings.TrimSuffix(strings.ToLower(m.host), ".")
	if rest, ok := strings.CutPrefix(m.host, "*"); ok {
		m.host, m.wild = rest, true
	}
	return m
}

// splitAuthority splits a request's :authority into host and port ("" when
// absent) without allocating; an IPv6 literal keeps no brackets.
func splitAuthority(a string) (host, port string) {
	if strings.HasPrefix(a, "[") {
		if i := strings.IndexByte(a, ']'); i > 0 {
			host, rest := a[1:i], a[i+1:]
			if strings.HasPrefix(rest, ":") {
				return host, rest[1:]
			}
			return host, ""
		}
		return a, ""
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && strings.IndexByte(a, ':') == i {
		return a[:i], a[i+1:]
	}
	return a, ""
}

// match reports whether a call's :authority satisfies the rule: DNS names
// compare case-insensitively, a trailing dot is ignored, and the port only
// counts when the rule names one.
func (m *authorityMatcher) match(authority string) bool {
	if !m.active {
		return true
	}
	host, port := splitAuthority(authority)
	host = strings.TrimSuffix(host, ".")
	if m.port != "" && port != m.port {
		return false
	}
	if !m.wild {
		return strings.EqualFold(host, m.host)
	}
	// "*.example.com": at least one character before ".example.com".
	return len(host) > len(m.host) && strings.EqualFold(host[len(host)-len(m.host):], m.host)
}

func (m *authorityMatcher) describe(authority string) string {
	if authority == "" {
		return fmt.Sprintf("authority: want %q, the call has none (give -authority)", m.rule)
	}
	return fmt.Sprintf("authority %q does not match %q", authority, m.rule)
}

// compileEdge compiles the route's authority rule, header rules and JWT
// requirement.
func (r *Route) compileEdge(rc config.Route, o *options) error {
	if a := rc.Match.Authority; a != "" {
		if err := config.CheckAuthority(a); err != nil {
			return err
		}
		r.authority = compileAuthority(a)
	}
	var e engine.HeaderEdits
	if h := rc.RequestHeaders; h != nil {
		e.RequestRemove = slices.Clone(h.Remove)
		e.RequestSet = fields(h.Set)
		e.RequestAdd = fields(h.Add)
	}
	if h := rc.ResponseHeaders; h != nil {
		e.ResponseRemove = slices.Clone(h.Remove)
		e.ResponseSet = fields(h.Set)
		e.ResponseAdd = fields(h.Add)
	}
	if j := rc.JWT; j != nil {
		r.JWT = j.Provider
		// The token stops at meshd unless its provider says to forward it.
		if p := o.provider(j.Provider); p == nil || !p.Forward {
			e.RequestRemove = append(e.RequestRemove, "authorization")
		}
	}
	if len(e.RequestRemove)+len(e.RequestSet)+len(e.RequestAdd)+len(e.ResponseRemove)+len(e.ResponseSet)+len(e.ResponseAdd) > 0 {
		r.Edits = &e
	}
	return nil
}

// fields turns a name → value map into header fields, sorted by name so a
// route's edits are the same on every load.
func fields(m map[string]string) []hpack.HeaderField {
	if len(m) == 0 {
		return nil
	}
	out := make([]hpack.HeaderField, 0, len(m))
	for k, v := range m {
		out = append(out, hpack.HeaderField{Name: k, Value: v})
	}
	slices.SortFunc(out, func(a, b hpack.HeaderField) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// WithJWTProviders gives the router the providers routes name, so that a
// route requiring a token drops the authorization header before
// forwarding unless its provider has forward: true.
func WithJWTProviders(ps []config.JWTProvider) Option {
	return func(o *options) { o.jwt = ps }
}

func (o *options) provider(name string) *config.JWTProvider {
	for i := range o.jwt {
		if o.jwt[i].Name == name {
			return &o.jwt[i]
		}
	}
	return nil
}

// DescribeEdits renders a route's header edits for `route explain`, one
// line each ("request set x-edge: 1"); nil when it has none.
func (r *Route) DescribeEdits() []string {
	e := r.Edits
	if e == nil {
		return nil
	}
	var out []string
	side := func(dir string, remove []string, set, add []hpack.HeaderField) {
		for _, n := range remove {
			out = append(out, fmt.Sprintf("%s remove %s", dir, n))
		}
		for _, f := range set {
			out = append(out, fmt.Sprintf("%s set %s: %q", dir, f.Name, f.Value))
		}
		for _, f := range add {
			out = append(out, fmt.Sprintf("%s add %s: %q", dir, f.Name, f.Value))
		}
	}
	side("request", e.RequestRemove, e.RequestSet, e.RequestAdd)
	side("response", e.ResponseRemove, e.ResponseSet, e.ResponseAdd)
	return out
}
