package kuberoutes

import (
	"cmp"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/director"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/router"
)

// Mode is which GRPCRoutes meshd serves: those attached to one Gateway
// (edge) or those attached to Services (mesh, GAMMA).
type Mode struct {
	// Gateway, when set, is the Gateway of edge mode.
	Gateway *config.GatewayRef
	// Mesh selects mesh mode.
	Mesh bool
}

// Services finds a Service by namespace and name (nil: none).
type Services func(namespace, name string) *corev1.Service

// Rules is what the GRPCRoutes attached to meshd translate to: routes in
// match precedence order (each with its Source, "grpcroute:NS/NAME") and
// the clusters their backends need.
type Rules struct {
	Routes   []config.Route
	Clusters []config.Cluster
}

// Verdict is what meshd made of one GRPCRoute, for its status: one entry
// per parentRef that names meshd (the others are not meshd's to answer).
type Verdict struct {
	Namespace, Name string
	Generation      int64
	Parents         []ParentVerdict
	// Unsupported is why the route was refused as a whole ("" if not).
	Unsupported string
	// Refs is the first unresolved backend's reason and message ("" if
	// every backend resolved).
	RefsReason, RefsMessage string
}

// ParentVerdict is one parentRef meshd answers for.
type ParentVerdict struct {
	Ref gwv1.ParentReference
	// NotAccepted is the reason it is not accepted ("" if accepted).
	NotAccepted, Message string
}

// SourceName returns the config source name of the route ns/name.
func SourceName(namespace, name string) string { return "grpcroute:" + namespace + "/" + name }

// ClusterName is the meshd cluster of a Service port.
func ClusterName(namespace, service string, port int32) string {
	return fmt.Sprintf("kube:%s/%s:%d", namespace, service, port)
}

// Translate turns the GRPCRoutes into meshd rules and verdicts. Routes
// that attach to nothing of meshd's get no verdict. A route with a field
// meshd cannot honour is refused whole (its verdict says which field),
// never served with the field ignored. Translate is pure: it reads the
// Services through svc and changes nothing.
func Translate(mode Mode, routes []*gwv1.GRPCRoute, svc Services) (Rules, []Verdict) {
	routes = slices.Clone(routes)
	// Gateway API precedence between routes: the oldest first, then by
	// namespace/name.
	slices.SortFunc(routes, func(a, b *gwv1.GRPCRoute) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	var out Rules
	var verdicts []Verdict
	clusters := map[string]bool{}
	type ranked struct {
		r    config.Route
		rank int
		seq  int
	}
	var all []ranked
	for _, gr := range routes {
		v, rs, cls := translateOne(mode, gr, svc)
		if v == nil {
			continue
		}
		verdicts = append(verdicts, *v)
		for _, c := range cls {
			if !clusters[c.Name] {
				clusters[c.Name] = true
				out.Clusters = append(out.Clusters, c)
			}
		}
		for _, r := range rs {
			all = append(all, ranked{r: r, rank: specificity(r.Match), seq: len(all)})
		}
	}
	// Within the routes' order, more specific matches first (Gateway API's
	// GRPCRoute precedence: exact service and method, then service, then
	// regular expressions, then match-all; more header matches first).
	slices.SortStableFunc(all, func(a, b ranked) int { return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.seq, b.seq)) })
	for _, r := range all {
		out.Routes = append(out.Routes, r.r)
	}
	slices.SortFunc(out.Clusters, func(a, b config.Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out, verdicts
}

// specificity ranks a match for ordering: lower is more specific.
func specificity(m config.Match) int {
	var kind int
	switch {
	case m.Method != "":
		kind = 0
	case m.Service != "":
		kind = 1
	case hasHeader(m, router.PathHeader):
		kind = 2
	default:
		kind = 3
	}
	n := 0
	for _, h := range m.Headers {
		if !strings.HasPrefix(h.Name, ":") {
			n++
		}
	}
	return kind*1000 - n
}

func hasHeader(m config.Match, name string) bool {
	for _, h := range m.Headers {
		if h.Name == name {
			return true
		}
	}
	return false
}

// parentTarget is what one accepted parentRef restricts calls to, beyond
// the rule's own match: nothing (edge without hostnames), an :authority
// pattern, or (mesh) the Service's addresses.
type parentTarget struct {
	label     string // route name part, "" for edge
	host      string // match.authority (one hostname pattern), "" for none
	authority string // regex on :authority, "" for none
	dst       string // regex on :original-dst, "" for none
}

func translateOne(mode Mode, gr *gwv1.GRPCRoute, svc Services) (*Verdict, []config.Route, []config.Cluster) {
	v := &Verdict{Namespace: gr.Namespace, Name: gr.Name, Generation: gr.Generation}
	var targets []parentTarget
	for _, ref := range gr.Spec.ParentRefs {
		pv, ts, ours := parent(mode, gr, ref, svc)
		if !ours {
			continue
		}
		v.Parents = append(v.Parents, pv)
		if pv.NotAccepted == "" {
			targets = append(targets, ts...)
		}
	}
	if len(v.Parents) == 0 {
		return nil, nil, nil
	}
	if msg := unsupported(mode, gr); msg != "" {
		v.Unsupported = msg
		return v, nil, nil
	}
	fs := make([]ruleFilters, len(gr.Spec.Rules))
	for i, rule := range gr.Spec.Rules {
		var msg string
		if fs[i], msg = filters(gr, i, rule, svc); msg != "" {
			v.Unsupported = msg
			return v, nil, nil
		}
	}
	src := SourceName(gr.Namespace, gr.Name)
	var routes []config.Route
	var clusters []config.Cluster
	for i, rule := range gr.Spec.Rules {
		split, cls, reason, msg := backends(gr, rule, svc)
		clusters = append(clusters, cls...)
		if reason == "" {
			reason, msg = fs[i].refsReason, fs[i].refsMessage
		}
		if reason != "" && v.RefsReason == "" {
			v.RefsReason, v.RefsMessage = reason, msg
		}
		if len(split) == 0 {
			continue // no backend with weight > 0: the rule takes no calls
		}
		if c := fs[i].cluster; c != nil {
			clusters = append(clusters, *c)
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.GRPCRouteMatch{{}}
		}
		for j, m := range matches {
			base, err := match(m)
			if err != nil {
				v.Unsupported = fmt.Sprintf("rules[%d].matches[%d]: %v", i, j, err)
				return v, nil, nil
			}
			for _, t := range targets {
				r := config.Route{Name: fmt.Sprintf("%s/rules[%d]/matches[%d]%s", src, i, j, t.label), Source: src, Match: base}
				r.Match.Headers = slices.Clone(base.Headers)
				r.Match.Authority = t.host
				fs[i].apply(&r)
				if t.authority != "" {
					re := t.authority
					r.Match.Headers = append(r.Match.Headers, config.HeaderMatch{Name: router.AuthorityHeader, Regex: &re})
				}
				if t.dst != "" {
					re := t.dst
					r.Match.Headers = append(r.Match.Headers, config.HeaderMatch{Name: director.OriginalDstHeader, Regex: &re})
				}
				if len(split) == 1 {
					r.Cluster = split[0].Name
				} else {
					r.Clusters = slices.Clone(split)
				}
				routes = append(routes, r)
			}
		}
	}
	return v, routes, clusters
}

// parent decides whether ref names meshd and, if so, whether meshd
// accepts it and which calls it covers.
func parent(mode Mode, gr *gwv1.GRPCRoute, ref gwv1.ParentReference, svc Services) (ParentVerdict, []parentTarget, bool) {
	group, kind := gwv1.GroupName, "Gateway"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	ns := gr.Namespace
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	pv := ParentVerdict{Ref: ref}
	switch {
	case mode.Gateway != nil:
		if group != gwv1.GroupName || kind != "Gateway" || string(ref.Name) != mode.Gateway.Name || ns != mode.Gateway.Namespace {
			return pv, nil, false
		}
		if ref.SectionName != nil || ref.Port != nil {
			pv.NotAccepted = string(gwv1.RouteReasonUnsupportedValue)
			pv.Message = "meshd serves the whole Gateway: parentRefs[].sectionName and port are not supported"
			return pv, nil, true
		}
		// One hostname is a match.authority rule (the router's host
		// match, which route explain shows as such); several are one
		// regular expression on :authority. Both ignore case and port.
		t := parentTarget{}
		switch len(gr.Spec.Hostnames) {
		case 0:
		case 1:
			t.host = string(gr.Spec.Hostnames[0])
		default:
			t.authority = hostnamesRegex(gr.Spec.Hostnames)
		}
		return pv, []parentTarget{t}, true
	case mode.Mesh:
		if (group != "" && group != "core") || kind != "Service" {
			return pv, nil, false
		}
		s := svc(ns, string(ref.Name))
		if s == nil {
			pv.NotAccepted = string(gwv1.RouteReasonNoMatchingParent)
			pv.Message = fmt.Sprintf("Service %s/%s not found", ns, ref.Name)
			return pv, nil, true
		}
		var ports []int32
		for _, p := range s.Spec.Ports {
			if ref.Port == nil || p.Port == int32(*ref.Port) {
				ports = append(ports, p.Port)
			}
		}
		if len(ports) == 0 {
			pv.NotAccepted = string(gwv1.RouteReasonNoMatchingParent)
			pv.Message = fmt.Sprintf("Service %s/%s has no port %d", ns, ref.Name, *ref.Port)
			return pv, nil, true
		}
		label := "/service:" + ns + "/" + string(ref.Name)
		if ref.Port != nil {
			label += ":" + strconv.Itoa(int(*ref.Port))
		}
		ts := []parentTarget{{label: label + "/authority", authority: serviceAuthorityRegex(s.Name, s.Namespace, ports)}}
		if dst := clusterIPRegex(s, ports); dst != "" {
			ts = append(ts, parentTarget{label: label + "/original-dst", dst: dst})
		}
		return pv, ts, true
	}
	return pv, nil, false
}

// unsupported names the first field of gr meshd cannot honour ("" if
// none): session persistence, default gateways, and hostnames on mesh
// routes (GAMMA routes are selected by their Service). Filters are
// checked by filters (filters.go).
func unsupported(mode Mode, gr *gwv1.GRPCRoute) string {
	if gr.Spec.UseDefaultGateways != "" {
		return "spec.useDefaultGateways is not supported"
	}
	if mode.Mesh && len(gr.Spec.Hostnames) > 0 {
		return "spec.hostnames is not supported on mesh (Service-attached) routes"
	}
	for i, rule := range gr.Spec.Rules {
		if rule.SessionPersistence != nil {
			return fmt.Sprintf("rules[%d].sessionPersistence is not supported", i)
		}
	}
	return ""
}

// backends resolves a rule's backendRefs into a weighted split of
// clusters. Unresolvable backends keep their cluster (it finds no
// endpoints, so their share of calls fails UNAVAILABLE naming it, as the
// spec asks) and report the first reason for ResolvedRefs.
func backends(gr *gwv1.GRPCRoute, rule gwv1.GRPCRouteRule, svc Services) (split []config.WeightedCluster, clusters []config.Cluster, reason, msg string) {
	note := func(r gwv1.RouteConditionReason, format string, args ...any) {
		if reason == "" {
			reason, msg = string(r), fmt.Sprintf(format, args...)
		}
	}
	for _, b := range rule.BackendRefs {
		cl, usable, r, m := resolveRef(gr, b.BackendObjectReference, svc)
		if r != "" {
			note(gwv1.RouteConditionReason(r), "%s", m)
		}
		if !usable {
			continue
		}
		w := int32(1)
		if b.Weight != nil {
			w = *b.Weight
		}
		clusters = append(clusters, cl)
		if w > 0 {
			split = append(split, config.WeightedCluster{Name: cl.Name, Weight: uint32(w)})
		}
	}
	return split, clusters, reason, msg
}

// resolveRef resolves a backend reference to a Service port into its
// cluster. reason and msg say why it did not resolve (a ResolvedRefs
// reason); usable is whether the cluster can still be named (a Service
// that does not exist yet has one, without endpoints until it appears).
func resolveRef(gr *gwv1.GRPCRoute, b gwv1.BackendObjectReference, svc Services) (cl config.Cluster, usable bool, reason, msg string) {
	group, kind := "", "Service"
	if b.Group != nil {
		group = string(*b.Group)
	}
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	ns := gr.Namespace
	if b.Namespace != nil {
		ns = string(*b.Namespace)
	}
	if (group != "" && group != "core") || kind != "Service" {
		return cl, false, string(gwv1.RouteReasonInvalidKind), fmt.Sprintf("backendRef %s: kind %s/%s is not supported (Services only)", b.Name, group, kind)
	}
	if ns != gr.Namespace {
		return cl, false, string(gwv1.RouteReasonRefNotPermitted), fmt.Sprintf("backendRef %s/%s: cross-namespace references (ReferenceGrant) are not supported", ns, b.Name)
	}
	if b.Port == nil {
		return cl, false, string(gwv1.RouteReasonUnsupportedValue), fmt.Sprintf("backendRef %s: port is required", b.Name)
	}
	port := int32(*b.Port)
	s := svc(ns, string(b.Name))
	if s == nil {
		reason, msg = string(gwv1.RouteReasonBackendNotFound), fmt.Sprintf("Service %s/%s not found", ns, b.Name)
	} else if _, ok := discovery.ServicePortName(s, strconv.Itoa(int(port))); !ok {
		reason, msg = string(gwv1.RouteReasonBackendNotFound), fmt.Sprintf("Service %s/%s has no port %d", ns, b.Name, port)
	}
	cl = config.Cluster{Name: ClusterName(ns, string(b.Name), port), Kubernetes: &config.KubernetesService{
		Service: string(b.Name), Namespace: ns, Port: strconv.Itoa(int(port))}}
	return cl, true, reason, msg
}

// match translates one GRPCRouteMatch into a meshd match.
func match(m gwv1.GRPCRouteMatch) (config.Match, error) {
	var out config.Match
	if mm := m.Method; mm != nil && (mm.Service != nil || mm.Method != nil) {
		svc, meth := deref(mm.Service), deref(mm.Method)
		regex := mm.Type != nil && *mm.Type == gwv1.GRPCMethodMatchRegularExpression
		switch {
		case !regex && svc != "" && meth != "":
			out.Method = "/" + svc + "/" + meth
		case !regex && svc != "":
			out.Service = svc
		default:
			sre, mre := `[^/]+`, `[^/]+`
			if regex {
				for _, s := range []string{svc, meth} {
					if _, err := regexp.Compile(s); err != nil {
						return out, fmt.Errorf("invalid regular expression %q: %v", s, err)
					}
				}
				if svc != "" {
					sre = "(?:" + svc + ")"
				}
				if meth != "" {
					mre = "(?:" + meth + ")"
				}
			} else {
				if svc != "" {
					sre = regexp.QuoteMeta(svc)
				}
				mre = regexp.QuoteMeta(meth)
			}
			re := "/" + sre + "/" + mre
			out.Prefix = "/"
			out.Headers = append(out.Headers, config.HeaderMatch{Name: router.PathHeader, Regex: &re})
		}
	} else {
		out.Prefix = "/"
	}
	for _, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		val := h.Value
		if h.Type != nil && *h.Type == gwv1.GRPCHeaderMatchRegularExpression {
			if _, err := regexp.Compile(val); err != nil {
				return out, fmt.Errorf("header %s: invalid regular expression %q: %v", name, val, err)
			}
			out.Headers = append(out.Headers, config.HeaderMatch{Name: name, Regex: &val})
		} else {
			out.Headers = append(out.Headers, config.HeaderMatch{Name: name, Exact: &val})
		}
	}
	return out, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// hostnamesRegex matches an :authority whose host is one of hs ("*.x.y":
// any host ending in ".x.y"), with or without a port, ignoring case.
func hostnamesRegex(hs []gwv1.Hostname) string {
	alts := make([]string, len(hs))
	for i, h := range hs {
		s := string(h)
		if rest, ok := strings.CutPrefix(s, "*."); ok {
			alts[i] = `[^:/]+\.` + regexp.QuoteMeta(rest)
		} else {
			alts[i] = regexp.QuoteMeta(s)
		}
	}
	return `(?i)(?:` + strings.Join(alts, "|") + `)(?::[0-9]+)?`
}

// serviceAuthorityRegex matches the DNS names of a Service (name, name.ns,
// name.ns.svc, name.ns.svc.cluster.local), bare or with one of ports.
func serviceAuthorityRegex(name, ns string, ports []int32) string {
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(int(p))
	}
	n, s := regexp.QuoteMeta(name), regexp.QuoteMeta(ns)
	return `(?i)` + n + `(?:\.` + s + `(?:\.svc(?:\.cluster\.local)?)?)?(?::(?:` + strings.Join(ps, "|") + `))?`
}

// clusterIPRegex matches the Service's cluster IPs on ports ("" for a
// headless Service, which has none).
func clusterIPRegex(s *corev1.Service, ports []int32) string {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	var alts []string
	for _, ip := range ips {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		for _, p := range ports {
			alts = append(alts, regexp.QuoteMeta(net.JoinHostPort(ip, strconv.Itoa(int(p)))))
		}
	}
	if len(alts) == 0 {
		return ""
	}
	return strings.Join(alts, "|")
}
