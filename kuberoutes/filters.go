package kuberoutes

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/config"
)

// This file translates a rule's filters: RequestHeaderModifier and
// ResponseHeaderModifier become the route's request_headers and
// response_headers (config.HeaderRules), RequestMirror its mirror (a
// cluster per mirrored Service, named and discovered as backendRefs are).
// Filters on a backendRef and ExtensionRef filters refuse the route:
// meshd's header rules and mirror belong to the route, and a per-backend
// edit applied to the whole split would be a different behaviour silently.

// ruleFilters is what one rule's filters translate to; every route of the
// rule carries it.
type ruleFilters struct {
	request, response *config.HeaderRules
	mirror            *config.Mirror
	// cluster is the mirror's cluster (nil without a mirror).
	cluster *config.Cluster
	// refsReason and refsMessage say why a mirror's backendRef did not
	// resolve (the mirror is then dropped, as the spec asks).
	refsReason, refsMessage string
}

// filters translates rules[i]'s filters. unsupported is why the route must
// be refused ("" if not).
func filters(gr *gwv1.GRPCRoute, i int, rule gwv1.GRPCRouteRule, svc Services) (f ruleFilters, unsupported string) {
	for j, b := range rule.BackendRefs {
		if len(b.Filters) > 0 {
			return f, fmt.Sprintf("rules[%d].backendRefs[%d].filters: meshd supports filters on the rule only, not on a backendRef (filter type %s)", i, j, b.Filters[0].Type)
		}
	}
	mirrors := 0
	for j, flt := range rule.Filters {
		p := fmt.Sprintf("rules[%d].filters[%d]", i, j)
		switch flt.Type {
		case gwv1.GRPCRouteFilterRequestHeaderModifier:
			if flt.RequestHeaderModifier == nil {
				return f, p + ": requestHeaderModifier is required for type RequestHeaderModifier"
			}
			if f.request != nil {
				return f, p + ": RequestHeaderModifier given twice"
			}
			hr, err := headerRules(flt.RequestHeaderModifier)
			if err != "" {
				return f, p + ".requestHeaderModifier: " + err
			}
			f.request = hr
		case gwv1.GRPCRouteFilterResponseHeaderModifier:
			if flt.ResponseHeaderModifier == nil {
				return f, p + ": responseHeaderModifier is required for type ResponseHeaderModifier"
			}
			if f.response != nil {
				return f, p + ": ResponseHeaderModifier given twice"
			}
			hr, err := headerRules(flt.ResponseHeaderModifier)
			if err != "" {
				return f, p + ".responseHeaderModifier: " + err
			}
			f.response = hr
		case gwv1.GRPCRouteFilterRequestMirror:
			m := flt.RequestMirror
			if m == nil {
				return f, p + ": requestMirror is required for type RequestMirror"
			}
			if mirrors++; mirrors > 1 {
				return f, p + ": meshd mirrors a rule to one backend only (a second RequestMirror filter)"
			}
			percent, err := mirrorPercent(m)
			if err != "" {
				return f, p + ".requestMirror: " + err
			}
			cl, _, reason, msg := resolveRef(gr, m.BackendRef, svc)
			if reason != "" {
				// An unresolved mirror backend is dropped, not served
				// (HTTPRequestMirrorFilter.BackendRef); ResolvedRefs says why.
				f.refsReason, f.refsMessage = reason, "requestMirror "+msg
				continue
			}
			f.cluster = &cl
			f.mirror = &config.Mirror{Cluster: cl.Name, Percent: percent}
		default:
			return f, fmt.Sprintf("%s: filter type %s is not supported by meshd", p, flt.Type)
		}
	}
	return f, ""
}

// headerRules translates a header filter. Names are lowercased (HTTP
// names are case-insensitive, gRPC metadata keys lowercase); a name meshd
// refuses to edit (config.ReservedHeader) or named twice refuses the
// route, its message naming the header.
func headerRules(h *gwv1.HTTPHeaderFilter) (*config.HeaderRules, string) {
	out := &config.HeaderRules{}
	seen := map[string]string{}
	use := func(field, raw string) (string, string) {
		name := strings.ToLower(raw)
		if why := config.ReservedHeader(name); why != "" {
			return "", fmt.Sprintf("%s header %q: meshd does not edit it: %s", field, raw, why)
		}
		if prev, ok := seen[name]; ok {
			return "", fmt.Sprintf("%s header %q: already named in %s (one action per header name)", field, raw, prev)
		}
		seen[name] = field
		return name, ""
	}
	for _, s := range h.Set {
		name, err := use("set", string(s.Name))
		if err != "" {
			return nil, err
		}
		if out.Set == nil {
			out.Set = map[string]string{}
		}
		out.Set[name] = s.Value
	}
	for _, a := range h.Add {
		name, err := use("add", string(a.Name))
		if err != "" {
			return nil, err
		}
		if out.Add == nil {
			out.Add = map[string]string{}
		}
		out.Add[name] = a.Value
	}
	for _, r := range h.Remove {
		name, err := use("remove", r)
		if err != "" {
			return nil, err
		}
		out.Remove = append(out.Remove, name)
	}
	return out, ""
}

// mirrorPercent is the share of calls a RequestMirror copies: percent,
// or fraction (denominator 100 by default), or 100 when neither is given.
func mirrorPercent(m *gwv1.HTTPRequestMirrorFilter) (float64, string) {
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return 0, "only one of percent and fraction may be given"
	case m.Percent != nil:
		if p := *m.Percent; p < 0 || p > 100 {
			return 0, fmt.Sprintf("percent %d is not between 0 and 100", p)
		}
		return float64(*m.Percent), ""
	case m.Fraction != nil:
		den := int32(100)
		if m.Fraction.Denominator != nil {
			den = *m.Fraction.Denominator
		}
		num := m.Fraction.Numerator
		if den <= 0 || num < 0 || num > den {
			return 0, fmt.Sprintf("fraction %d/%d is not between 0 and 1", num, den)
		}
		return 100 * float64(num) / float64(den), ""
	}
	return 100, ""
}

// apply copies f's header rules and mirror for one route, so that routes
// translated from one rule share nothing.
func (f ruleFilters) apply(r *config.Route) {
	if f.request != nil {
		r.RequestHeaders = cloneHeaderRules(f.request)
	}
	if f.response != nil {
		r.ResponseHeaders = cloneHeaderRules(f.response)
	}
	if f.mirror != nil {
		m := *f.mirror
		r.Mirror = &m
	}
}

func cloneHeaderRules(h *config.HeaderRules) *config.HeaderRules {
	return &config.HeaderRules{Set: maps.Clone(h.Set), Add: maps.Clone(h.Add), Remove: slices.Clone(h.Remove)}
}
