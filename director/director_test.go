package director

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// recorder keeps the calls the director reports.
type recorder struct{ calls []callrecord.Call }

func (r *recorder) ObserveCall(c *callrecord.Call) { r.calls = append(r.calls, *c) }

// cluster is a cluster of the given endpoints with health watching off,
// so they serve at once. Its grpc-go connections are never dialled.
func cluster(t *testing.T, name string, addrs ...string) *balancer.Cluster {
	t.Helper()
	cl, err := balancer.NewCluster(balancer.Options{Name: name, Health: balancer.HealthOptions{Disabled: true}},
		func(ep discovery.Endpoint) (*grpc.ClientConn, error) {
			return grpc.NewClient(ep.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		})
	if err != nil {
		t.Fatal(err)
	}
	var eps []discovery.Endpoint
	for _, a := range addrs {
		eps = append(eps, discovery.Endpoint{ID: a, Address: a, Weight: 1})
	}
	cl.Update(eps)
	t.Cleanup(cl.Close)
	return cl
}

// TestDirect: the director's decisions, each made by the policy package
// and reported once, without a network.
func TestDirect(t *testing.T) {
	t.Parallel()
	routes := []config.Route{
		{Name: "limited", Match: config.Match{Method: "/s.S/Limited"}, Cluster: "c"},
		{Name: "timed", Match: config.Match{Method: "/s.S/Timed"}, Cluster: "c", Timeout: config.Duration(2 * time.Second)},
		{Name: "retried", Match: config.Match{Method: "/s.S/Retried"}, Cluster: "c"},
		{Name: "empty", Match: config.Match{Method: "/s.S/Empty"}, Cluster: "none"},
		{Name: "unloaded", Match: config.Match{Method: "/s.S/Unloaded"}, Cluster: "ghost"},
	}
	pols := map[string]*policy.Route{
		"limited": {Name: "limited", RateLimit: policy.NewTokenBucket(1, 1, nil)},
		"timed":   {Name: "timed", Timeout: 2 * time.Second},
		"retried": {Name: "retried", IdleTimeout: time.Minute, Retry: &policy.Retry{Attempts: 3, RetryOn: []codes.Code{codes.Unavailable}, PerTryTimeout: time.Second, MaxBufferBytes: 1024}},
	}
	table, err := router.New(routes, router.WithPolicy(func(r config.Route) *policy.Route {
		if p := pols[r.Name]; p != nil {
			return p.Init()
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := New(WithObserver(rec))
	req := func(method string) *engine.Request { return &engine.Request{Method: method, Header: &engine.Header{}} }

	// No State yet: UNAVAILABLE, reported.
	if _, err := d.Direct(context.Background(), req("/s.S/Timed")); status.Code(err) != codes.Unavailable {
		t.Fatalf("before any State: %v", err)
	}
	st := &State{Table: table, Clusters: map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1", "127.0.0.1:2"), "none": cluster(t, "none")},
		Limits: map[string]*policy.Limiter{"c": policy.NewLimiter(0, 0).WithLimits("c", 0, 0)}, Budgets: map[string]*policy.RetryBudget{}}
	d.Swap(st)

	for _, tc := range []struct {
		method string
		code   codes.Code
		msg    string
	}{
		{"/s.S/Nothing", codes.Unimplemented, "no route for method /s.S/Nothing"},
		{"/s.S/Empty", codes.Unavailable, `no healthy endpoint in cluster "none"`},
		{"/s.S/Unloaded", codes.Unavailable, `cluster "ghost", which is not loaded`},
	} {
		_, err := d.Direct(context.Background(), req(tc.method))
		if s := status.Convert(err); s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
			t.Errorf("%s: %v, want %v %q", tc.method, err, tc.code, tc.msg)
		}
	}
	if st.Active() != 0 {
		t.Fatalf("refused calls left %d counted on the State", st.Active())
	}

	// The rate limit admits one call, then refuses.
	tg, err := d.Direct(context.Background(), req("/s.S/Limited"))
	if err != nil || tg.Addr == "" {
		t.Fatalf("first limited call: %+v, %v", tg, err)
	}
	if _, err := d.Direct(context.Background(), req("/s.S/Limited")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second limited call: %v", err)
	}
	tg.Done(engine.Result{Code: codes.OK})

	// A route timeout is handed to the engine with its status.
	tg, err = d.Direct(context.Background(), req("/s.S/Timed"))
	if err != nil || tg.Timeout != 2*time.Second || tg.TimeoutErr == nil || tg.Retry != nil || tg.IdleTimeout != 0 {
		t.Fatalf("timed: %+v, %v", tg, err)
	}
	tg.Done(engine.Result{Code: codes.OK})

	// A retry route gets replay, per-try and idle settings; a retry goes
	// to the other endpoint.
	tg, err = d.Direct(context.Background(), req("/s.S/Retried"))
	if err != nil || tg.Retry == nil || tg.PerTryTimeout != time.Second || tg.PerTryErr == nil || tg.IdleTimeout != time.Minute || tg.RetryBufferBytes != 1024 {
		t.Fatalf("retried: %+v, %v", tg, err)
	}
	first := tg.Addr
	next, _, ok := tg.Retry(engine.RetryInfo{Result: engine.Result{Code: codes.Unavailable}, Took: time.Millisecond})
	if !ok || next.Addr == first || next.Addr == "" {
		t.Fatalf("retry: ok=%v to %q (first %q)", ok, next.Addr, first)
	}
	if _, _, ok := tg.Retry(engine.RetryInfo{Result: engine.Result{Code: codes.Internal}}); ok {
		t.Fatal("INTERNAL was retried")
	}
	tg.Done(engine.Result{Code: codes.Internal})

	if st.Active() != 0 {
		t.Fatalf("%d calls still counted after every Done", st.Active())
	}
	var got []string
	for _, c := range rec.calls {
		got = append(got, c.Route+":"+c.Code.String())
	}
	want := ":Unavailable :Unimplemented empty:Unavailable unloaded:Unavailable limited:ResourceExhausted limited:OK timed:OK retried:Internal"
	if strings.Join(got, " ") != want {
		t.Fatalf("observed calls\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	if last := rec.calls[len(rec.calls)-1]; last.Attempts != 2 {
		t.Fatalf("retried call reported %d attempts, want 2", last.Attempts)
	}
}
