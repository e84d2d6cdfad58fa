package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/kubetest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/kuberoutes"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/test/backend"
)

// kubeShared is one API server for the GRPCRoute tests, which keep to
// their own namespaces; it starts on first use and TestMain stops it.
var kubeShared struct {
	once sync.Once
	env  *kubetest.Env
	err  error
}

func sharedKube(t *testing.T) *kubetest.Env {
	t.Helper()
	assets := kubetest.Assets(t)
	kubeShared.once.Do(func() { kubeShared.env, kubeShared.err = kubetest.Launch(assets) })
	if kubeShared.err != nil {
		t.Fatal(kubeShared.err)
	}
	return kubeShared.env
}

// kubeFix is a namespace with Services whose backends listen on dummy
// interface addresses, and a meshd in edge mode for the Gateway
// "meshd-edge" of that namespace.
type kubeFix struct {
	t      *testing.T
	env    *kubetest.Env
	ns     string
	ips    []string
	next   int
	m      *mesh
	client testpb.TestServiceClient
}

func newKubeFix(t *testing.T, env *kubetest.Env, ns string, nIPs int) *kubeFix {
	t.Helper()
	f := &kubeFix{t: t, env: env, ns: env.Namespace(t, ns), ips: kubetest.BackendIPs(t, nIPs)}
	return f
}

// service starts one backend per ip for Service name (port 9000, one
// EndpointSlice per backend, ready).
func (f *kubeFix) service(name string, n int) []*backend.Backend {
	f.t.Helper()
	f.env.Service(f.t, f.ns, name, 9000)
	var bs []*backend.Backend
	for i := 0; i < n; i++ {
		b := f.backend(fmt.Sprintf("%s-%d", name, i))
		f.env.ApplySlice(f.t, kubetest.Slice(f.ns, fmt.Sprintf("%s-%d", name, i), name, map[string]bool{b.Addr: true}))
		bs = append(bs, b)
	}
	return bs
}

func (f *kubeFix) backend(name string) *backend.Backend {
	f.t.Helper()
	b, err := backend.Start(name, backend.WithAddr(f.ips[f.next]+":0"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.next++
	if b.Health != nil {
		b.SetServing(true)
	}
	f.t.Cleanup(b.Stop)
	return b
}

// start runs meshd: a file with a catch-all route to a static fallback
// cluster, and the GRPCRoutes of the namespace.
func (f *kubeFix) start(fallback *backend.Backend) {
	f.t.Helper()
	yaml := fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 2s
kubernetes:
  kubeconfig: %s
  namespaces: [%s]
  lease_namespace: %s
  grpcroutes: {gateway: {name: meshd-edge, namespace: %s}}
routes:
  - {name: file-fallback, match: {prefix: /}, cluster: fallback}
clusters:
  - {name: fallback, endpoints: [%s]}
`, f.env.Kubeconfig, f.ns, f.ns, f.ns, fallback.Addr)
	cfg, err := config.Parse([]byte(yaml), "kube.yaml")
	if err != nil {
		f.t.Fatal(err)
	}
	f.m = runMesh(f.t, cfg, server.WithKubeOptions(kuberoutes.Options{
		Identity: f.ns, LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond}))
	f.client = testpb.NewTestServiceClient(dial(f.t, f.m.Addr))
}

func (f *kubeFix) route(r *gwv1.GRPCRoute) *gwv1.GRPCRoute {
	f.t.Helper()
	r.Namespace = f.ns
	out, err := f.env.Gateway.GatewayV1().GRPCRoutes(f.ns).Create(context.Background(), r, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *kubeFix) get(name string) *gwv1.GRPCRoute {
	f.t.Helper()
	r, err := f.env.Gateway.GatewayV1().GRPCRoutes(f.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// condition returns meshd's condition typ on route name ("" if none).
func (f *kubeFix) condition(name, typ string) (status, reason, msg string) {
	for _, p := range f.get(name).Status.Parents {
		if p.ControllerName != kuberoutes.ControllerName {
			continue
		}
		for _, c := range p.Conditions {
			if c.Type == typ {
				return string(c.Status), c.Reason, c.Message
			}
		}
	}
	return "", "", ""
}

func (f *kubeFix) call(method string, kv ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	var err error
	if method == "UnaryCall" {
		_, err = f.client.UnaryCall(ctx, &testpb.SimpleRequest{})
	} else {
		_, err = f.client.EmptyCall(ctx, &testpb.Empty{})
	}
	return err
}

func ptr[T any](v T) *T { return &v }

func edgeParent(ns, gw string) gwv1.ParentReference {
	return gwv1.ParentReference{Name: gwv1.ObjectName(gw), Namespace: ptr(gwv1.Namespace(ns))}
}

func backendRef(name string, weight int32) gwv1.GRPCBackendRef {
	return gwv1.GRPCBackendRef{BackendRef: gwv1.BackendRef{Weight: ptr(weight),
		BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr(gwv1.PortNumber(9000))}}}
}

func methodMatch(svc, method string, headers ...string) gwv1.GRPCRouteMatch {
	m := gwv1.GRPCRouteMatch{Method: &gwv1.GRPCMethodMatch{Service: ptr(svc)}}
	if method != "" {
		m.Method.Method = ptr(method)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		m.Headers = append(m.Headers, gwv1.GRPCHeaderMatch{Name: gwv1.GRPCHeaderName(headers[i]), Value: headers[i+1]})
	}
	return m
}

const testSvc = "grpc.testing.TestService"

func sum(bs []*backend.Backend) int64 {
	var n int64
	for _, b := range bs {
		n += b.Calls()
	}
	return n
}

// A GRPCRoute on meshd's Gateway routes by method and header to its
// Services' endpoints before the file's routes; a backend Service that
// does not exist is BackendNotFound and its calls UNAVAILABLE naming it;
// a route on another Gateway is ignored; status is written once.
func TestKubeGRPCRouteEdge(t *testing.T) {
	t.Parallel()
	f := newKubeFix(t, sharedKube(t), "edge-routes", 4)
	users := f.service("users", 2)
	other := f.service("other", 1)
	fallback := startBackends(t, "fallback", 1)
	f.start(fallback[0])
	if err := f.call("UnaryCall", "x-tenant", "acme"); err != nil || fallback[0].Calls() != 1 {
		t.Fatalf("before any GRPCRoute the file's route serves: err %v, fallback calls %d", err, fallback[0].Calls())
	}

	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "foreign"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "someone-else")}},
		Rules:           []gwv1.GRPCRouteRule{{BackendRefs: []gwv1.GRPCBackendRef{backendRef("other", 1)}}},
	}})
	start := time.Now()
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "users"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules: []gwv1.GRPCRouteRule{
			{Matches: []gwv1.GRPCRouteMatch{methodMatch(testSvc, "UnaryCall", "x-tenant", "acme")}, BackendRefs: []gwv1.GRPCBackendRef{backendRef("users", 1)}},
			{Matches: []gwv1.GRPCRouteMatch{methodMatch(testSvc, "")}, BackendRefs: []gwv1.GRPCBackendRef{backendRef("other", 1)}},
			{Matches: []gwv1.GRPCRouteMatch{methodMatch(testSvc, "EmptyCall", "x-broken", "1")}, BackendRefs: []gwv1.GRPCBackendRef{backendRef("missing", 1)}},
		},
	}})
	testkit.WaitFor(t, 10*time.Second, "the GRPCRoute to route x-tenant: acme to users", func() bool {
		return f.call("UnaryCall", "x-tenant", "acme") == nil && sum(users) > 0
	})
	t.Logf("GRPCRoute write to the first call following it: %v", time.Since(start))

	before := [3]int64{sum(users), sum(other), fallback[0].Calls()}
	for i := 0; i < 20; i++ {
		for _, c := range []struct {
			method string
			kv     []string
		}{{"UnaryCall", []string{"x-tenant", "acme"}}, {"UnaryCall", []string{"x-tenant", "other"}}, {"EmptyCall", nil}} {
			if err := f.call(c.method, c.kv...); err != nil {
				t.Fatalf("%s %v: %v", c.method, c.kv, err)
			}
		}
	}
	if got := [3]int64{sum(users) - before[0], sum(other) - before[1], fallback[0].Calls() - before[2]}; got != [3]int64{20, 40, 0} {
		t.Errorf("calls to users, other, fallback: %v, want [20 40 0] (the foreign route must not take any)", got)
	}
	if users[0].Calls() == 0 || users[1].Calls() == 0 {
		t.Errorf("users' endpoints got %d and %d calls, want both used", users[0].Calls(), users[1].Calls())
	}
	err := f.call("EmptyCall", "x-broken", "1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "kube:"+f.ns+"/missing:9000") {
		t.Errorf("call to a missing backend: %v, want UNAVAILABLE naming kube:%s/missing:9000", err, f.ns)
	}

	testkit.WaitFor(t, 10*time.Second, "status on users", func() bool {
		a, _, _ := f.condition("users", "Accepted")
		r, reason, _ := f.condition("users", "ResolvedRefs")
		return a == "True" && r == "False" && reason == "BackendNotFound"
	})
	if ps := f.get("foreign").Status.Parents; len(ps) != 0 {
		t.Errorf("meshd wrote status on a route of another Gateway: %+v", ps)
	}
	// No write when nothing changed: another route's arrival makes meshd
	// recompute every status, and users' must stay as it is.
	rv := f.get("users").ResourceVersion
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "late"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules: []gwv1.GRPCRouteRule{{Matches: []gwv1.GRPCRouteMatch{methodMatch("late.Svc", "")}, BackendRefs: []gwv1.GRPCBackendRef{func() gwv1.GRPCBackendRef {
			b := backendRef("other", 1) // filters on a backendRef: meshd supports them on the rule only
			b.Filters = []gwv1.GRPCRouteFilter{{Type: gwv1.GRPCRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gwv1.HTTPHeaderFilter{Remove: []string{"x"}}}}
			return b
		}()}}},
	}})
	testkit.WaitFor(t, 10*time.Second, "late refused as UnsupportedValue", func() bool {
		a, reason, _ := f.condition("late", "Accepted")
		return a == "False" && reason == "UnsupportedValue"
	})
	if got := f.get("users").ResourceVersion; got != rv {
		t.Errorf("users' status was rewritten though nothing changed (resourceVersion %s → %s)", rv, got)
	}
	_, body := adminGet(t, f.m.Admin, "/config_dump")
	if !strings.Contains(body, `"grpcroute:`+f.ns+`/users"`) || !strings.Contains(body, `"file-fallback": "file"`) {
		t.Errorf("/config_dump does not name the routes' sources:\n%.2000s", body)
	}
}

// A GRPCRoute's rule filters reach the call: RequestHeaderModifier's
// edits arrive at the backend, ResponseHeaderModifier's at the client,
// and RequestMirror copies every call to its Service; a header meshd does
// not edit refuses the route naming it.
func TestKubeGRPCRouteFilters(t *testing.T) {
	t.Parallel()
	f := newKubeFix(t, sharedKube(t), "edge-filters", 2)
	users := f.service("users", 1)[0]
	shadow := f.service("shadow", 1)[0]
	fallback := startBackends(t, "fallback", 1)
	f.start(fallback[0])
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "filtered"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules: []gwv1.GRPCRouteRule{{
			Matches:     []gwv1.GRPCRouteMatch{methodMatch(testSvc, "UnaryCall")},
			BackendRefs: []gwv1.GRPCBackendRef{backendRef("users", 1)},
			Filters: []gwv1.GRPCRouteFilter{
				{Type: gwv1.GRPCRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gwv1.HTTPHeaderFilter{
					Set:    []gwv1.HTTPHeader{{Name: "X-Env", Value: "prod"}},
					Add:    []gwv1.HTTPHeader{{Name: "x-via", Value: "meshd"}},
					Remove: []string{"x-debug"}}},
				{Type: gwv1.GRPCRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gwv1.HTTPHeaderFilter{
					Set:    []gwv1.HTTPHeader{{Name: "x-served-by", Value: "meshd"}},
					Remove: []string{"x-backend"}}},
				{Type: gwv1.GRPCRouteFilterRequestMirror, RequestMirror: &gwv1.HTTPRequestMirrorFilter{
					BackendRef: gwv1.BackendObjectReference{Name: "shadow", Port: ptr(gwv1.PortNumber(9000))}}},
			},
		}},
	}})
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "reserved"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules: []gwv1.GRPCRouteRule{{
			Matches:     []gwv1.GRPCRouteMatch{methodMatch(testSvc, "EmptyCall")},
			BackendRefs: []gwv1.GRPCBackendRef{backendRef("users", 1)},
			Filters: []gwv1.GRPCRouteFilter{{Type: gwv1.GRPCRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gwv1.HTTPHeaderFilter{
				Set: []gwv1.HTTPHeader{{Name: "grpc-timeout", Value: "1S"}}}}},
		}},
	}})
	call := func() (metadata.MD, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-env", "dev", "x-via", "client", "x-debug", "1")
		var hdr metadata.MD
		_, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr))
		return hdr, err
	}
	// The mirror's cluster finds its endpoint on its own schedule; copies
	// made before that are dropped, so count from its first copy on.
	testkit.WaitFor(t, 10*time.Second, "the filtered route to take UnaryCall and mirror it", func() bool {
		_, err := call()
		return err == nil && users.Calls() > 0 && shadow.Calls() > 0
	})
	base, baseShadow := users.Calls(), shadow.Calls()
	const n = 20
	for i := 0; i < n; i++ {
		hdr, err := call()
		if err != nil {
			t.Fatal(err)
		}
		if got := hdr.Get("x-served-by"); len(got) != 1 || got[0] != "meshd" || len(hdr.Get("x-backend")) != 0 {
			t.Fatalf("response headers %v, want x-served-by: meshd and no x-backend", hdr)
		}
	}
	md := users.LastMetadata()
	if got := md.Get("x-env"); len(got) != 1 || got[0] != "prod" {
		t.Errorf("backend saw x-env %q, want [prod] (set replaces)", got)
	}
	if got := md.Get("x-via"); len(got) != 2 || got[0] != "client" || got[1] != "meshd" {
		t.Errorf("backend saw x-via %q, want [client meshd] (add appends)", got)
	}
	if got := md.Get("x-debug"); len(got) != 0 {
		t.Errorf("backend saw x-debug %q, want it removed", got)
	}
	// Every call is mirrored (no percent: 100%); copies may still be on
	// their way when the primary answers.
	// Copies of calls made before base may land after it, so the mirror
	// gets at least n more; never more copies than calls.
	testkit.WaitFor(t, 10*time.Second, "a copy of every call at the mirror", func() bool { return shadow.Calls()-baseShadow >= n })
	if got := users.Calls() - base; got != n {
		t.Errorf("backend got %d calls, want %d", got, n)
	}
	if shadow.Calls() > users.Calls() {
		t.Errorf("mirror got %d copies of %d calls", shadow.Calls(), users.Calls())
	}
	if got := shadow.LastMetadata().Get("x-env"); len(got) != 1 || got[0] != "prod" {
		t.Errorf("mirror saw x-env %q, want the edited request [prod]", got)
	}
	t.Logf("backend got %d calls, mirror %d copies", users.Calls(), shadow.Calls())
	testkit.WaitFor(t, 10*time.Second, "status on both routes", func() bool {
		a, _, _ := f.condition("filtered", "Accepted")
		r, _, _ := f.condition("filtered", "ResolvedRefs")
		b, reason, msg := f.condition("reserved", "Accepted")
		return a == "True" && r == "True" && b == "False" && reason == "UnsupportedValue" && strings.Contains(msg, `"grpc-timeout"`)
	})
	_, _, msg := f.condition("reserved", "Accepted")
	t.Logf("reserved: %s", msg)
	if err := f.call("EmptyCall"); err != nil || fallback[0].Calls() == 0 {
		t.Errorf("EmptyCall (the refused route's) went elsewhere than the file's fallback: err %v, fallback calls %d", err, fallback[0].Calls())
	}
}

// Editing a GRPCRoute's weights under load moves the calls with none
// failing.
func TestKubeWeightsUnderLoad(t *testing.T) {
	t.Parallel()
	f := newKubeFix(t, sharedKube(t), "edge-weights", 2)
	a := f.service("a", 1)
	b := f.service("b", 1)
	f.start(startBackends(t, "fallback", 1)[0])
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "split"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules:           []gwv1.GRPCRouteRule{{BackendRefs: []gwv1.GRPCBackendRef{backendRef("a", 100), backendRef("b", 0)}}},
	}})
	testkit.WaitFor(t, 10*time.Second, "calls to reach a", func() bool { return f.call("EmptyCall") == nil && sum(a) > 0 })

	var calls, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				calls.Add(1)
				if err := f.call("EmptyCall"); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	defer func() { stop(); wg.Wait() }()
	testkit.WaitFor(t, 5*time.Second, "load to run", func() bool { return calls.Load() > 100 })
	r := f.get("split")
	r.Spec.Rules[0].BackendRefs = []gwv1.GRPCBackendRef{backendRef("a", 0), backendRef("b", 100)}
	start := time.Now()
	if _, err := f.env.Gateway.GatewayV1().GRPCRoutes(f.ns).Update(context.Background(), r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "calls to move to b", func() bool { return sum(b) > 0 })
	t.Logf("weights edit to the first call on the new weights: %v", time.Since(start))
	aAfter := sum(a)
	testkit.WaitFor(t, 10*time.Second, "200 more calls on b", func() bool { return sum(b) > 200 })
	stop()
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed during the weights edit; first: %v", n, calls.Load(), *firstErr.Load())
	}
	// Calls already picked when the edit landed may still end on a.
	if extra := sum(a) - aAfter; extra > 8 {
		t.Errorf("a kept getting calls after the edit: %d more", extra)
	}
	t.Logf("%d calls under load, 0 failed", calls.Load())
}

// EndpointSlice changes are followed within a second: an endpoint added
// takes calls, an endpoint turned not ready stops taking them.
func TestKubeEndpointSliceChanges(t *testing.T) {
	t.Parallel()
	f := newKubeFix(t, sharedKube(t), "edge-slices", 2)
	first := f.service("svc", 1)[0]
	f.start(startBackends(t, "fallback", 1)[0])
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "all"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules:           []gwv1.GRPCRouteRule{{BackendRefs: []gwv1.GRPCBackendRef{backendRef("svc", 1)}}},
	}})
	testkit.WaitFor(t, 10*time.Second, "calls to reach svc", func() bool { return f.call("EmptyCall") == nil && first.Calls() > 0 })

	second := f.backend("svc-new")
	start := time.Now()
	f.env.ApplySlice(t, kubetest.Slice(f.ns, "svc-new", "svc", map[string]bool{second.Addr: true}))
	took := testkit.WaitFor(t, time.Second, "the added endpoint to take calls", func() bool {
		return f.call("EmptyCall") == nil && second.Calls() > 0
	})
	t.Logf("endpoint added to its first call: %v (%v)", took, time.Since(start))

	start = time.Now()
	f.env.ApplySlice(t, kubetest.Slice(f.ns, "svc-0", "svc", map[string]bool{first.Addr: false}))
	testkit.WaitFor(t, time.Second, "the not-ready endpoint to stop taking calls", func() bool {
		n := first.Calls()
		for i := 0; i < 10; i++ {
			if f.call("EmptyCall") != nil {
				return false
			}
		}
		return first.Calls() == n
	})
	t.Logf("endpoint not ready to no more calls: %v", time.Since(start))
}

// With the API server stopped meshd keeps serving its last rules, and
// follows changes again once it is back.
func TestKubeAPIServerDown(t *testing.T) {
	t.Parallel()
	env := kubetest.Start(t)
	f := newKubeFix(t, env, "edge-outage", 2)
	a := f.service("a", 1)
	b := f.service("b", 1)
	f.start(startBackends(t, "fallback", 1)[0])
	f.route(&gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "r"}, Spec: gwv1.GRPCRouteSpec{
		CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{edgeParent(f.ns, "meshd-edge")}},
		Rules:           []gwv1.GRPCRouteRule{{BackendRefs: []gwv1.GRPCBackendRef{backendRef("a", 1)}}},
	}})
	testkit.WaitFor(t, 10*time.Second, "calls to reach a", func() bool { return f.call("EmptyCall") == nil && sum(a) > 0 })

	if err := env.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	n := sum(a)
	for i := 0; i < 50; i++ {
		if err := f.call("EmptyCall"); err != nil {
			t.Fatalf("call %d with the API server down: %v", i, err)
		}
	}
	if sum(a) != n+50 {
		t.Errorf("a got %d of 50 calls with the API server down", sum(a)-n)
	}
	if err := env.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	r := f.get("r")
	r.Spec.Rules[0].BackendRefs = []gwv1.GRPCBackendRef{backendRef("b", 1)}
	start := time.Now()
	if _, err := env.Gateway.GatewayV1().GRPCRoutes(f.ns).Update(context.Background(), r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	took := testkit.WaitFor(t, 45*time.Second, "the edit made after the restart to take effect", func() bool {
		return f.call("EmptyCall") == nil && sum(b) > 0
	})
	t.Logf("API server back: an edit took effect after %v (%v)", took, time.Since(start))
}
