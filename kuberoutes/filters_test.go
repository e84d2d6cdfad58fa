package kuberoutes

import (
	"reflect"
	"strings"
	"testing"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

func headerFilter(typ gwv1.GRPCRouteFilterType, h gwv1.HTTPHeaderFilter) gwv1.GRPCRouteFilter {
	f := gwv1.GRPCRouteFilter{Type: typ}
	if typ == gwv1.GRPCRouteFilterRequestHeaderModifier {
		f.RequestHeaderModifier = &h
	} else {
		f.ResponseHeaderModifier = &h
	}
	return f
}

func mirrorFilter(name string, percent *int32, fraction *gwv1.Fraction) gwv1.GRPCRouteFilter {
	return gwv1.GRPCRouteFilter{Type: gwv1.GRPCRouteFilterRequestMirror, RequestMirror: &gwv1.HTTPRequestMirrorFilter{
		BackendRef: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr(gwv1.PortNumber(9000))},
		Percent:    percent, Fraction: fraction}}
}

func TestTranslateFilters(t *testing.T) {
	t.Parallel()
	users, shadow := service("app", "users", "10.0.0.5", 9000), service("app", "shadow", "10.0.0.6", 9000)
	edits := gwv1.HTTPHeaderFilter{
		Set:    []gwv1.HTTPHeader{{Name: "X-Env", Value: "prod"}},
		Add:    []gwv1.HTTPHeader{{Name: "x-via", Value: "meshd"}},
		Remove: []string{"X-Debug"},
	}
	want := &config.HeaderRules{Set: map[string]string{"x-env": "prod"}, Add: map[string]string{"x-via": "meshd"}, Remove: []string{"x-debug"}}
	for _, tc := range []struct {
		name    string
		filters []gwv1.GRPCRouteFilter
		refs    []gwv1.GRPCBackendRef // default: users:9000
		// refused: the route is refused with Unsupported containing each.
		refused                  []string
		request, response        *config.HeaderRules
		mirror                   *config.Mirror
		refsReason, refsContains string
	}{
		{name: "request headers", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier, edits)}, request: want},
		{name: "response headers", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterResponseHeaderModifier, edits)}, response: want},
		{name: "both directions", filters: []gwv1.GRPCRouteFilter{
			headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier, gwv1.HTTPHeaderFilter{Remove: []string{"x-a"}}),
			headerFilter(gwv1.GRPCRouteFilterResponseHeaderModifier, gwv1.HTTPHeaderFilter{Remove: []string{"x-b"}}),
		}, request: &config.HeaderRules{Remove: []string{"x-a"}}, response: &config.HeaderRules{Remove: []string{"x-b"}}},
		{name: "grpc header refused", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: "grpc-timeout", Value: "1S"}}})},
			refused: []string{"rules[0].filters[0].requestHeaderModifier", `"grpc-timeout"`}},
		{name: "content-type refused", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterResponseHeaderModifier,
			gwv1.HTTPHeaderFilter{Add: []gwv1.HTTPHeader{{Name: "Content-Type", Value: "text/plain"}}})},
			refused: []string{"responseHeaderModifier", `"Content-Type"`}},
		{name: "hop-by-hop refused", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Remove: []string{"connection"}})}, refused: []string{`"connection"`, "hop-by-hop"}},
		{name: "te refused", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: "TE", Value: "x"}}})}, refused: []string{`"TE"`}},
		{name: "pseudo header refused", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: ":authority", Value: "x"}}})}, refused: []string{`":authority"`, "pseudo"}},
		{name: "one action per name", filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: "x-a", Value: "1"}}, Add: []gwv1.HTTPHeader{{Name: "X-A", Value: "2"}}})},
			refused: []string{`"X-A"`, "already named in set"}},
		{name: "mirror default all", filters: []gwv1.GRPCRouteFilter{mirrorFilter("shadow", nil, nil)},
			mirror: &config.Mirror{Cluster: "kube:app/shadow:9000", Percent: 100}},
		{name: "mirror percent", filters: []gwv1.GRPCRouteFilter{mirrorFilter("shadow", ptr(int32(25)), nil)},
			mirror: &config.Mirror{Cluster: "kube:app/shadow:9000", Percent: 25}},
		{name: "mirror fraction", filters: []gwv1.GRPCRouteFilter{mirrorFilter("shadow", nil, &gwv1.Fraction{Numerator: 1, Denominator: ptr(int32(8))})},
			mirror: &config.Mirror{Cluster: "kube:app/shadow:9000", Percent: 12.5}},
		{name: "mirror fraction of 100", filters: []gwv1.GRPCRouteFilter{mirrorFilter("shadow", nil, &gwv1.Fraction{Numerator: 5})},
			mirror: &config.Mirror{Cluster: "kube:app/shadow:9000", Percent: 5}},
		{name: "mirror to a missing Service is dropped", filters: []gwv1.GRPCRouteFilter{mirrorFilter("ghost", nil, nil)},
			refsReason: "BackendNotFound", refsContains: "requestMirror Service app/ghost not found"},
		{name: "two mirrors refused", filters: []gwv1.GRPCRouteFilter{mirrorFilter("shadow", nil, nil), mirrorFilter("users", nil, nil)},
			refused: []string{"rules[0].filters[1]", "one backend"}},
		{name: "backendRef filters refused", refs: []gwv1.GRPCBackendRef{func() gwv1.GRPCBackendRef {
			b := backend("users", 9000, nil)
			b.Filters = []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier, edits)}
			return b
		}()}, refused: []string{"rules[0].backendRefs[0].filters", "on the rule only", "RequestHeaderModifier"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			refs := tc.refs
			if refs == nil {
				refs = []gwv1.GRPCBackendRef{backend("users", 9000, nil)}
			}
			rule := gwv1.GRPCRouteRule{Filters: tc.filters, BackendRefs: refs}
			rules, verdicts := Translate(edge, []*gwv1.GRPCRoute{gwRoute("app", "r", 0, edgeRef, rule)}, svcs(users, shadow))
			if len(verdicts) != 1 {
				t.Fatalf("verdicts %+v", verdicts)
			}
			v := verdicts[0]
			if tc.refused != nil {
				for _, s := range tc.refused {
					if !strings.Contains(v.Unsupported, s) {
						t.Errorf("Unsupported %q, want it to contain %q", v.Unsupported, s)
					}
				}
				if len(rules.Routes) != 0 {
					t.Errorf("a refused route was served: %+v", rules.Routes)
				}
				return
			}
			if v.Unsupported != "" {
				t.Fatalf("route refused: %s", v.Unsupported)
			}
			if v.RefsReason != tc.refsReason || !strings.Contains(v.RefsMessage, tc.refsContains) {
				t.Errorf("ResolvedRefs %q (%s), want %q containing %q", v.RefsReason, v.RefsMessage, tc.refsReason, tc.refsContains)
			}
			if len(rules.Routes) != 1 {
				t.Fatalf("routes %+v", rules.Routes)
			}
			r := rules.Routes[0]
			if !reflect.DeepEqual(r.RequestHeaders, tc.request) || !reflect.DeepEqual(r.ResponseHeaders, tc.response) {
				t.Errorf("request_headers %+v, response_headers %+v, want %+v, %+v", r.RequestHeaders, r.ResponseHeaders, tc.request, tc.response)
			}
			if !reflect.DeepEqual(r.Mirror, tc.mirror) {
				t.Errorf("mirror %+v, want %+v", r.Mirror, tc.mirror)
			}
			if tc.mirror != nil {
				found := false
				for _, c := range rules.Clusters {
					if c.Name == tc.mirror.Cluster && c.Kubernetes != nil && c.Kubernetes.Service == "shadow" && c.Kubernetes.Port == "9000" {
						found = true
					}
				}
				if !found {
					t.Errorf("clusters %+v lack the mirror's %s with EndpointSlice discovery", rules.Clusters, tc.mirror.Cluster)
				}
			}
			// The router compiles the header rules it is given.
			if _, err := router.New(rules.Routes); err != nil {
				t.Errorf("router refused the translation: %v", err)
			}
		})
	}
}

// A rule's filters reach every route it translates to, each with its own
// copy.
func TestTranslateFiltersEveryRoute(t *testing.T) {
	t.Parallel()
	users := service("app", "users", "10.96.0.7", 9000)
	ref := gwv1.ParentReference{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: "users"}
	rule := gwv1.GRPCRouteRule{
		Matches: []gwv1.GRPCRouteMatch{{Method: &gwv1.GRPCMethodMatch{Service: ptr("a.A")}}, {Method: &gwv1.GRPCMethodMatch{Service: ptr("b.B")}}},
		Filters: []gwv1.GRPCRouteFilter{headerFilter(gwv1.GRPCRouteFilterRequestHeaderModifier,
			gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: "x-a", Value: "1"}}})},
		BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, nil)},
	}
	rules, _ := Translate(Mode{Mesh: true}, []*gwv1.GRPCRoute{gwRoute("app", "r", 0, ref, rule)}, svcs(users))
	if len(rules.Routes) != 4 { // 2 matches × (:authority, :original-dst)
		t.Fatalf("routes %+v", rules.Routes)
	}
	for _, r := range rules.Routes {
		if r.RequestHeaders == nil || r.RequestHeaders.Set["x-a"] != "1" {
			t.Errorf("route %s: request_headers %+v", r.Name, r.RequestHeaders)
		}
	}
	rules.Routes[0].RequestHeaders.Set["x-a"] = "changed"
	if rules.Routes[1].RequestHeaders.Set["x-a"] != "1" {
		t.Error("routes of one rule share their header rules")
	}
}
