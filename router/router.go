package router

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
)

// Headers is the read side of gRPC metadata; metadata.MD satisfies it.
type Headers interface {
	Get(key string) []string
}

// Route is one compiled routing rule. It is immutable.
type Route struct {
	// Name is the route's config name.
	Name string
	// Index is the route's position in the file (0-based).
	Index int
	// Source is where the route came from ("" for the file, "consul:KEY",
	// "grpcroute:NS/NAME").
	Source string
	// Match is the route's selector as configured.
	Match config.Match
	// Timeout is the call's total budget at meshd (0: none).
	Timeout time.Duration
	// MaxGRPCTimeout caps a client-supplied deadline (0: no cap).
	MaxGRPCTimeout time.Duration
	// Retry is the retry policy, nil when calls are not retried.
	Retry *config.Retry
	// Clusters are the weighted targets; a single-cluster route has one.
	Clusters []config.WeightedCluster
	// Policy is the route's policy value (timeouts, rate limit, retry),
	// reached from the route so that no call looks it up by name. nil: no
	// policy (tests, synthetic routes).
	Policy *policy.Route
	// Listeners limits the route to these listeners; nil: every listener.
	Listeners []string
	// Edits are the route's header rules in the engine's form (edge.go);
	// nil when the route has none, so such calls pay one nil check.
	Edits *engine.HeaderEdits
	// JWT names the provider whose token the route requires; "": none.
	JWT string

	authority authorityMatcher
	headers   []headerMatcher
	cum       []uint32 // cumulative weights for PickCluster
	total     uint32
}

// PickCluster returns the cluster for one call; rnd is a uniformly random
// number (math/rand/v2.Uint32). A single-cluster route ignores it.
func (r *Route) PickCluster(rnd uint32) string {
	if len(r.Clusters) == 1 {
		return r.Clusters[0].Name
	}
	x := rnd % r.total
	for i, c := range r.cum {
		if x < c {
			return r.Clusters[i].Name
		}
	}
	return r.Clusters[len(r.Clusters)-1].Name
}

// Table is an immutable, ordered set of routes.
type Table struct {
	routes    []*Route
	byMethod  map[string][]int // exact method → route indexes, ascending
	byService map[string][]int // service → route indexes, ascending
	prefixes  []int            // prefix routes, ascending

	// views holds, when some route names listeners, the table each
	// listener sees (edge.go); open is the one a listener no route names
	// sees. Both nil otherwise: every listener sees the whole table.
	views  map[string]*Table
	open   *Table
	pseudo bool // some header match tests :authority or :path
}

// Pseudo headers a route's header match can test besides the call's
// metadata. The caller of Lookup shows them (see Table.MatchesPseudo); they
// are never forwarded as metadata.
const (
	// AuthorityHeader is the call's :authority (or Host).
	AuthorityHeader = ":authority"
	// PathHeader is the call's :path, "/pkg.Service/Method"; regex matches
	// on it select methods by pattern (GRPCRoute RegularExpression).
	PathHeader = ":path"
)

// Option configures New.
type Option func(*options)

type options struct {
	policy func(config.Route) *policy.Route
	jwt    []config.JWTProvider
}

// WithPolicy gives each route the policy value pol returns for it.
func WithPolicy(pol func(config.Route) *policy.Route) Option {
	return func(o *options) { o.policy = pol }
}

// New compiles routes (already validated by config) into a Table.
func New(routes []config.Route, opts ...Option) (*Table, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var all []*Route
	var pseudo bool // some header match tests :authority or :path
	for i, rc := range routes {
		r := &Route{
			Name:           rc.Name,
			Index:          i,
			Source:         rc.Source,
			Match:          rc.Match,
			Timeout:        rc.Timeout.D(),
			MaxGRPCTimeout: rc.MaxGRPCTimeout.D(),
			Retry:          rc.Retry,
			Clusters:       rc.Clusters,
			Listeners:      rc.Listeners,
		}
		if err := r.compileEdge(rc, &o); err != nil {
			return nil, fmt.Errorf("router: route %q: %w", rc.Name, err)
		}
		if o.policy != nil {
			r.Policy = o.policy(rc)
		}
		if len(r.Clusters) == 0 && rc.Cluster != "" {
			r.Clusters = []config.WeightedCluster{{Name: rc.Cluster, Weight: 1}}
		}
		if len(r.Clusters) == 0 {
			return nil, fmt.Errorf("router: route %q has no cluster", rc.Name)
		}
		var total uint64
		for _, c := range r.Clusters {
			w := c.Weight
			if w == 0 {
				w = 1
			}
			total += uint64(w)
			r.cum = append(r.cum, uint32(total))
		}
		// PickCluster works in uint32; a wrapped total would pick wrongly
		// or, at exactly 2^32, divide by zero on the data path.
		if total > math.MaxUint32 {
			return nil, fmt.Errorf("router: route %q: cluster weights add up to %d, more than %d", rc.Name, total, uint64(math.MaxUint32))
		}
		r.total = uint32(total)
		for _, h := range rc.Match.Headers {
			if h.Name == AuthorityHeader || h.Name == PathHeader {
				pseudo = true
			}
			m, err := compileHeader(h)
			if err != nil {
				return nil, fmt.Errorf("router: route %q: %w", rc.Name, err)
			}
			r.headers = append(r.headers, m)
		}
		if rc.Match.Method == "" && rc.Match.Service == "" && rc.Match.Prefix == "" {
			return nil, fmt.Errorf("router: route %q has no method, service or prefix", rc.Name)
		}
		all = append(all, r)
	}
	t := index(all)
	t.pseudo = pseudo
	t.compileViews()
	return t, nil
}

// index builds the lookup maps of routes, in the given order.
func index(routes []*Route) *Table {
	t := &Table{routes: routes, byMethod: map[string][]int{}, byService: map[string][]int{}}
	for i, r := range routes {
		switch {
		case r.Match.Method != "":
			t.byMethod[r.Match.Method] = append(t.byMethod[r.Match.Method], i)
		case r.Match.Service != "":
			t.byService[r.Match.Service] = append(t.byService[r.Match.Service], i)
		default:
			t.prefixes = append(t.prefixes, i)
		}
	}
	return t
}

// MatchesPseudo reports whether some route tests :authority or :path, so
// that the caller of Lookup must show them through md (it costs the caller
// a wrapper per call, which tables without such routes do not pay).
func (t *Table) MatchesPseudo() bool { return t.pseudo }

// Routes returns the routes in file order. The slice must not be modified.
func (t *Table) Routes() []*Route { return t.routes }

// serviceOf returns "pkg.Svc" of "/pkg.Svc/Method" without allocating.
func serviceOf(method string) string {
	if len(method) < 2 || method[0] != '/' {
		return ""
	}
	s := method[1:]
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return ""
}

// Lookup returns the first route, in file order, that matches method and md,
// or nil, for a call without an authority (routes with a match.authority
// never match). md may be nil. It does not allocate or lock.
func (t *Table) Lookup(method string, md Headers) *Route {
	return t.Match(method, "", md)
}

// Match returns the first route, in file order, that matches a call to
// method with :authority authority and metadata md, or nil. md may be nil.
// It does not allocate or lock.
func (t *Table) Match(method, authority string, md Headers) *Route {
	best := -1
	if idx, ok := t.byMethod[method]; ok {
		best = t.first(idx, best, authority, md)
	}
	if idx, ok := t.byService[serviceOf(method)]; ok {
		best = t.first(idx, best, authority, md)
	}
	for _, i := range t.prefixes {
		if best >= 0 && i > best {
			break
		}
		if strings.HasPrefix(method, t.routes[i].Match.Prefix) && t.routes[i].conditionsMatch(authority, md) {
			best = i
			break
		}
	}
	if best < 0 {
		return nil
	}
	return t.routes[best]
}

// first returns the lowest index in idx (ascending) whose conditions match
// and which beats best, else best.
func (t *Table) first(idx []int, best int, authority string, md Headers) int {
	for _, i := range idx {
		if best >= 0 && i > best {
			return best
		}
		if t.routes[i].conditionsMatch(authority, md) {
			return i
		}
	}
	return best
}

// conditionsMatch reports whether the route's authority and header
// conditions hold for the call.
func (r *Route) conditionsMatch(authority string, md Headers) bool {
	return r.authority.match(authority) && r.headersMatch(md)
}

func (r *Route) headersMatch(md Headers) bool {
	for i := range r.headers {
		if !r.headers[i].match(md) {
			return false
		}
	}
	return true
}

// pathMatches reports whether the route's method/service/prefix selects
// method, ignoring headers.
func (r *Route) pathMatches(method string) bool {
	switch {
	case r.Match.Method != "":
		return r.Match.Method == method
	case r.Match.Service != "":
		return r.Match.Service == serviceOf(method)
	default:
		return strings.HasPrefix(method, r.Match.Prefix)
	}
}

// Verdict is why one route did or did not take a call, for `route explain`.
type Verdict struct {
	Route   *Route
	Matched bool
	// Reason says what failed ("method differs", "header x-tenant: want exact
	// \"acme\", got [\"other\"]"), or "matched".
	Reason string
}

// Explain evaluates every route against the call in file order and says why
// each did or did not match; the first Matched verdict is the route Lookup
// returns. It allocates freely: it is for operators, not the data path.
func (t *Table) Explain(method string, md Headers) []Verdict {
	return t.ExplainCall(Call{Method: method, Header: md})
}

// Call is a call as `route explain` describes it.
type Call struct {
	// Method is the full method name.
	Method string
	// Authority is the call's :authority ("": none).
	Authority string
	// Listener is the listener the call arrives on; "": any (routes
	// limited to listeners are evaluated as if the call came on one of
	// theirs).
	Listener string
	// Header is the call's metadata; may be nil.
	Header Headers
}

// ExplainCall is Explain for a call with an authority, arriving on a
// listener: the first Matched verdict is the route
// ForListener(c.Listener).Match returns.
func (t *Table) ExplainCall(c Call) []Verdict {
	method, md := c.Method, c.Header
	out := make([]Verdict, 0, len(t.routes))
	for _, r := range t.routes {
		v := Verdict{Route: r}
		switch {
		case c.Listener != "" && len(r.Listeners) > 0 && !slices.Contains(r.Listeners, c.Listener):
			v.Reason = fmt.Sprintf("listener %q is not one of the route's %q", c.Listener, r.Listeners)
		case !r.pathMatches(method):
			v.Reason = pathReason(r, method)
		case !r.authority.match(c.Authority):
			v.Reason = r.authority.describe(c.Authority)
		default:
			v.Matched, v.Reason = true, "matched"
			for i := range r.headers {
				if !r.headers[i].match(md) {
					v.Matched = false
					v.Reason = "header " + r.headers[i].describe(md)
					break
				}
			}
		}
		out = append(out, v)
	}
	return out
}

func pathReason(r *Route, method string) string {
	switch {
	case r.Match.Method != "":
		return fmt.Sprintf("method %s is not %s", method, r.Match.Method)
	case r.Match.Service != "":
		return fmt.Sprintf("service %q is not %q", serviceOf(method), r.Match.Service)
	default:
		return fmt.Sprintf("path %s lacks prefix %s", method, r.Match.Prefix)
	}
}

// headerMatcher is one compiled metadata condition.
type headerMatcher struct {
	name    string
	kind    byte // 'e' exact, 'r' regex, 'p' prefix, '?' present
	value   string
	present bool
	re      *regexp.Regexp
	invert  bool
}

func compileHeader(h config.HeaderMatch) (headerMatcher, error) {
	if err := h.Check(); err != nil {
		return headerMatcher{}, fmt.Errorf("header %q: %w", h.Name, err)
	}
	m := headerMatcher{name: h.Name, invert: h.Invert}
	switch {
	case h.Exact != nil:
		m.kind, m.value = 'e', *h.Exact
	case h.Prefix != nil:
		m.kind, m.value = 'p', *h.Prefix
	case h.Present != nil:
		m.kind, m.present = '?', *h.Present
	case h.Regex != nil:
		re, err := regexp.Compile("^(?:" + *h.Regex + ")$")
		if err != nil {
			return headerMatcher{}, fmt.Errorf("header %q: %w", h.Name, err)
		}
		m.kind, m.value, m.re = 'r', *h.Regex, re
	}
	return m, nil
}

// NewHeaderMatcher compiles one condition; it exists for fuzzing and for
// callers that match metadata outside a route.
func NewHeaderMatcher(h config.HeaderMatch) (func(Headers) bool, error) {
	m, err := compileHeader(h)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return m.match, nil
}

func (m *headerMatcher) match(md Headers) bool {
	var vals []string
	if md != nil {
		vals = md.Get(m.name)
	}
	return m.test(vals) != m.invert
}

func (m *headerMatcher) test(vals []string) bool {
	if m.kind == '?' {
		return (len(vals) > 0) == m.present
	}
	for _, v := range vals {
		switch m.kind {
		case 'e':
			if v == m.value {
				return true
			}
		case 'p':
			if strings.HasPrefix(v, m.value) {
				return true
			}
		case 'r':
			if m.re.MatchString(v) {
				return true
			}
		}
	}
	return false
}

func (m *headerMatcher) describe(md Headers) string {
	var vals []string
	if md != nil {
		vals = md.Get(m.name)
	}
	var want string
	switch m.kind {
	case 'e':
		want = fmt.Sprintf("exact %q", m.value)
	case 'p':
		want = fmt.Sprintf("prefix %q", m.value)
	case 'r':
		want = fmt.Sprintf("regex %q", m.value)
	case '?':
		want = fmt.Sprintf("present=%v", m.present)
	}
	if m.invert {
		want = "not " + want
	}
	return fmt.Sprintf("%s: want %s, got %q", m.name, want, vals)
}
