package kuberoutes

import (
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/router"
)

func ptr[T any](v T) *T { return &v }

func svcs(list ...*corev1.Service) Services {
	return func(ns, name string) *corev1.Service {
		for _, s := range list {
			if s.Namespace == ns && s.Name == name {
				return s
			}
		}
		return nil
	}
}

func service(ns, name, ip string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p})
	}
	return s
}

func gwRoute(ns, name string, age time.Duration, parent gwv1.ParentReference, rules ...gwv1.GRPCRouteRule) *gwv1.GRPCRoute {
	return &gwv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Unix(1e9, 0).Add(-age))},
		Spec:       gwv1.GRPCRouteSpec{CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{parent}}, Rules: rules},
	}
}

func backend(name string, port int32, weight *int32) gwv1.GRPCBackendRef {
	return gwv1.GRPCBackendRef{BackendRef: gwv1.BackendRef{Weight: weight,
		BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr(gwv1.PortNumber(port))}}}
}

var (
	edge     = Mode{Gateway: &config.GatewayRef{Name: "meshd-edge", Namespace: "edge"}}
	edgeRef  = gwv1.ParentReference{Name: "meshd-edge", Namespace: ptr(gwv1.Namespace("edge"))}
	otherRef = gwv1.ParentReference{Name: "other", Namespace: ptr(gwv1.Namespace("edge"))}
)

func TestTranslateEdge(t *testing.T) {
	t.Parallel()
	users := service("app", "users", "10.0.0.5", 9000)
	rule := gwv1.GRPCRouteRule{
		Matches: []gwv1.GRPCRouteMatch{{
			Method:  &gwv1.GRPCMethodMatch{Service: ptr("users.v1.Users"), Method: ptr("GetUser")},
			Headers: []gwv1.GRPCHeaderMatch{{Name: "X-Tenant", Value: "acme"}},
		}},
		BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, ptr(int32(90))), backend("users-canary", 9000, ptr(int32(10))), backend("off", 9000, ptr(int32(0)))},
	}
	r := gwRoute("app", "users", 0, edgeRef, rule)
	r.Spec.Hostnames = []gwv1.Hostname{"api.example.com", "*.example.org"}
	ignored := gwRoute("app", "elsewhere", time.Hour, otherRef, rule)
	rules, verdicts := Translate(edge, []*gwv1.GRPCRoute{r, ignored}, svcs(users))
	if len(verdicts) != 1 || verdicts[0].Name != "users" {
		t.Fatalf("verdicts %+v, want one for app/users (the other route is another Gateway's)", verdicts)
	}
	v := verdicts[0]
	if v.Unsupported != "" || v.Parents[0].NotAccepted != "" {
		t.Errorf("route refused: %+v", v)
	}
	if v.RefsReason != "BackendNotFound" || !strings.Contains(v.RefsMessage, "app/users-canary") {
		t.Errorf("ResolvedRefs reason %q (%s), want BackendNotFound naming app/users-canary", v.RefsReason, v.RefsMessage)
	}
	if len(rules.Routes) != 1 {
		t.Fatalf("routes %+v", rules.Routes)
	}
	got := rules.Routes[0]
	if got.Match.Method != "/users.v1.Users/GetUser" || got.Source != "grpcroute:app/users" {
		t.Errorf("route %+v", got)
	}
	if len(got.Clusters) != 2 || got.Clusters[0] != (config.WeightedCluster{Name: "kube:app/users:9000", Weight: 90}) {
		t.Errorf("split %+v (weight 0 leaves a backend out)", got.Clusters)
	}
	if len(rules.Clusters) != 3 {
		t.Errorf("clusters %+v", rules.Clusters)
	}
	var auth *regexp.Regexp
	for _, h := range got.Match.Headers {
		switch h.Name {
		case "x-tenant":
			if *h.Exact != "acme" {
				t.Errorf("header %+v", h)
			}
		case ":authority":
			auth = regexp.MustCompile("^(?:" + *h.Regex + ")$")
		}
	}
	if auth == nil {
		t.Fatal("no :authority match for the hostnames")
	}
	for host, want := range map[string]bool{"api.example.com": true, "API.example.com:443": true, "a.b.example.org": true, "example.org": false, "api.example.com.evil": false} {
		if auth.MatchString(host) != want {
			t.Errorf("authority %q matched %v, want %v", host, !want, want)
		}
	}
}

func TestTranslateMethodMatches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		m    gwv1.GRPCMethodMatch
		want config.Match
		path map[string]bool
	}{
		{name: "service", m: gwv1.GRPCMethodMatch{Service: ptr("a.B")}, want: config.Match{Service: "a.B"}},
		{name: "method only", m: gwv1.GRPCMethodMatch{Method: ptr("Get")}, path: map[string]bool{"/a.B/Get": true, "/a.B/GetX": false}},
		{name: "regex", m: gwv1.GRPCMethodMatch{Type: ptr(gwv1.GRPCMethodMatchRegularExpression), Service: ptr(`a\.v[0-9]+\.B`), Method: ptr("Get.*")},
			path: map[string]bool{"/a.v2.B/GetX": true, "/a.v2.B/List": false, "/x.a.v2.B/Get": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := match(gwv1.GRPCRouteMatch{Method: &tc.m})
			if err != nil {
				t.Fatal(err)
			}
			if tc.path == nil {
				if got.Service != tc.want.Service || got.Method != tc.want.Method {
					t.Errorf("match %+v, want %+v", got, tc.want)
				}
				return
			}
			if got.Prefix != "/" || len(got.Headers) != 1 || got.Headers[0].Name != ":path" {
				t.Fatalf("match %+v, want prefix / and a :path regex", got)
			}
			re := regexp.MustCompile("^(?:" + *got.Headers[0].Regex + ")$")
			for p, want := range tc.path {
				if re.MatchString(p) != want {
					t.Errorf("%s matched %v, want %v", p, !want, want)
				}
			}
		})
	}
}

func TestTranslateMesh(t *testing.T) {
	t.Parallel()
	users := service("app", "users", "10.96.0.7", 9000)
	ref := gwv1.ParentReference{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: "users"}
	r := gwRoute("app", "split", 0, ref, gwv1.GRPCRouteRule{BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, nil)}})
	missing := gwRoute("app", "nowhere", 0, gwv1.ParentReference{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: "ghost"},
		gwv1.GRPCRouteRule{BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, nil)}})
	rules, verdicts := Translate(Mode{Mesh: true}, []*gwv1.GRPCRoute{r, missing}, svcs(users))
	if len(verdicts) != 2 {
		t.Fatalf("verdicts %+v", verdicts)
	}
	for _, v := range verdicts {
		if v.Name == "nowhere" && v.Parents[0].NotAccepted != "NoMatchingParent" {
			t.Errorf("route to a missing Service: %+v", v.Parents[0])
		}
	}
	if len(rules.Routes) != 2 {
		t.Fatalf("routes %+v, want an :authority and an :original-dst route", rules.Routes)
	}
	seen := map[string]*regexp.Regexp{}
	for _, rt := range rules.Routes {
		h := rt.Match.Headers[len(rt.Match.Headers)-1]
		seen[h.Name] = regexp.MustCompile("^(?:" + *h.Regex + ")$")
	}
	for hdr, cases := range map[string]map[string]bool{
		":authority":    {"users": true, "users.app:9000": true, "users.app.svc.cluster.local": true, "users.other": false, "users:80": false},
		":original-dst": {"10.96.0.7:9000": true, "10.96.0.7:80": false},
	} {
		re := seen[hdr]
		if re == nil {
			t.Fatalf("no %s route", hdr)
		}
		for v, want := range cases {
			if re.MatchString(v) != want {
				t.Errorf("%s %q matched %v, want %v", hdr, v, !want, want)
			}
		}
	}
}

func TestTranslateRefusesUnsupported(t *testing.T) {
	t.Parallel()
	rule := gwv1.GRPCRouteRule{
		Filters:     []gwv1.GRPCRouteFilter{{Type: gwv1.GRPCRouteFilterExtensionRef, ExtensionRef: &gwv1.LocalObjectReference{Group: "x.io", Kind: "F", Name: "f"}}},
		BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, nil)},
	}
	rules, verdicts := Translate(edge, []*gwv1.GRPCRoute{gwRoute("app", "ext", 0, edgeRef, rule)}, svcs())
	if len(rules.Routes) != 0 {
		t.Errorf("a route with an unsupported filter was served: %+v", rules.Routes)
	}
	if len(verdicts) != 1 || !strings.Contains(verdicts[0].Unsupported, "ExtensionRef") {
		t.Errorf("verdicts %+v, want the route refused naming ExtensionRef", verdicts)
	}
	st := desiredStatus(gwRoute("app", "ext", 0, edgeRef), verdicts[0], "", metav1.Now())
	c := st.Parents[0].Conditions[0]
	if st.Parents[0].ControllerName != ControllerName || c.Type != "Accepted" || c.Status != metav1.ConditionFalse || c.Reason != "UnsupportedValue" {
		t.Errorf("status %+v", st)
	}
}

func TestDesiredStatusStable(t *testing.T) {
	t.Parallel()
	r := gwRoute("app", "users", 0, edgeRef)
	v := Verdict{Namespace: "app", Name: "users", Parents: []ParentVerdict{{Ref: edgeRef}}}
	first := desiredStatus(r, v, "", metav1.NewTime(time.Unix(100, 0)))
	r.Status.RouteStatus = first
	again := desiredStatus(r, v, "", metav1.NewTime(time.Unix(200, 0)))
	if !statusEqual(first, again) {
		t.Errorf("an unchanged verdict changed the status (a needless write):\n%+v\n%+v", first, again)
	}
	v.RefsReason, v.RefsMessage = "BackendNotFound", "gone"
	if statusEqual(first, desiredStatus(r, v, "", metav1.NewTime(time.Unix(200, 0)))) {
		t.Error("a changed verdict left the status as it was")
	}
}

// hdrs is call metadata for the router.
type hdrs map[string][]string

func (h hdrs) Get(k string) []string { return h[k] }

// TestTranslateHostnames: one hostname becomes match.authority, several
// an :authority regex; the router matches the same calls either way as
// the regex form did for one hostname.
func TestTranslateHostnames(t *testing.T) {
	t.Parallel()
	users := service("app", "users", "10.0.0.5", 9000)
	for _, tc := range []struct {
		name      string
		hostnames []gwv1.Hostname
		authority string // want match.authority ("": none)
		regex     bool   // want an :authority regex
		calls     map[string]bool
	}{
		{name: "none", calls: map[string]bool{"anything": true, "": true}},
		{name: "exact", hostnames: []gwv1.Hostname{"api.example.com"}, authority: "api.example.com",
			calls: map[string]bool{"api.example.com": true, "API.Example.com:443": true, "api.example.com:8443": true,
				"example.com": false, "x.api.example.com": false, "api.example.com.evil": false, "": false}},
		{name: "wildcard", hostnames: []gwv1.Hostname{"*.example.org"}, authority: "*.example.org",
			calls: map[string]bool{"a.example.org": true, "a.b.example.org:9000": true, "A.EXAMPLE.ORG": true,
				"example.org": false, ".example.org": false, "aexample.org": false, "example.org.evil": false}},
		{name: "several", hostnames: []gwv1.Hostname{"api.example.com", "*.example.org"}, regex: true,
			calls: map[string]bool{"api.example.com": true, "b.example.org:1": true, "example.org": false, "other.example.com": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gr := gwRoute("app", "r", 0, edgeRef, gwv1.GRPCRouteRule{BackendRefs: []gwv1.GRPCBackendRef{backend("users", 9000, nil)}})
			gr.Spec.Hostnames = tc.hostnames
			rules, _ := Translate(edge, []*gwv1.GRPCRoute{gr}, svcs(users))
			if len(rules.Routes) != 1 {
				t.Fatalf("routes %+v", rules.Routes)
			}
			got := rules.Routes[0]
			if got.Match.Authority != tc.authority || hasHeader(got.Match, ":authority") != tc.regex {
				t.Fatalf("match %+v, want authority %q and :authority regex %v", got.Match, tc.authority, tc.regex)
			}
			forms := map[string]config.Route{"translated": got}
			if len(tc.hostnames) == 1 {
				// The form every route had before: the regex on :authority.
				old := got
				re := hostnamesRegex(tc.hostnames)
				old.Match.Authority = ""
				old.Match.Headers = []config.HeaderMatch{{Name: ":authority", Regex: &re}}
				forms["regex"] = old
			}
			for form, r := range forms {
				tab, err := router.New([]config.Route{r})
				if err != nil {
					t.Fatalf("%s: %v", form, err)
				}
				for auth, want := range tc.calls {
					md := hdrs{}
					if auth != "" {
						md[":authority"] = []string{auth}
					}
					if matched := tab.Match("/a.B/C", auth, md) != nil; matched != want {
						t.Errorf("%s form: :authority %q matched %v, want %v", form, auth, matched, want)
					}
				}
			}
		})
	}
}
