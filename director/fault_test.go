package director

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// TestDirectFault: an abort is answered by Direct, before admission (no
// max_requests slot, nothing counted on the State) and reported with its
// kind; a delay becomes Target.FaultDelay for the engine's timer; a
// header-gated fault leaves calls without the header alone (with it:
// test.TestFaultHeaderGated).
func TestDirectFault(t *testing.T) {
	t.Parallel()
	routes := []config.Route{
		{Name: "abort", Match: config.Match{Method: "/s.S/Abort"}, Cluster: "c"},
		{Name: "delay", Match: config.Match{Method: "/s.S/Delay"}, Cluster: "c"},
		{Name: "slow", Match: config.Match{Method: "/s.S/Slow"}, Cluster: "c"},
	}
	pols := map[string]*policy.Route{
		"abort": {Name: "abort", Fault: &policy.Fault{AbortCode: codes.Unavailable, AbortPercent: 100}},
		"delay": {Name: "delay", Fault: &policy.Fault{Delay: time.Second, DelayPercent: 100, Header: "x-drill"}},
		"slow":  {Name: "slow", Fault: &policy.Fault{Delay: time.Second, DelayPercent: 100}},
	}
	table, err := router.New(routes, router.WithPolicy(func(r config.Route) *policy.Route { return pols[r.Name].Init() }))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := New(WithObserver(rec))
	lim := policy.NewLimiter(0, 0).WithLimits("c", 1, 0)
	st := &State{Table: table, Clusters: map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1")},
		Limits: map[string]*policy.Limiter{"c": lim}, Budgets: map[string]*policy.RetryBudget{}}
	d.Swap(st)
	req := func(method string) *engine.Request { return &engine.Request{Method: method, Header: &engine.Header{}} }

	for range 3 { // max_requests 1: aborts never take the slot
		_, err := d.Direct(context.Background(), req("/s.S/Abort"))
		if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "meshd: fault injected by route abort" {
			t.Fatalf("abort: %v", err)
		}
	}
	if st.Active() != 0 {
		t.Fatalf("aborted calls left %d counted on the State", st.Active())
	}
	tg, err := d.Direct(context.Background(), req("/s.S/Delay"))
	if err != nil || tg.FaultDelay != 0 {
		t.Fatalf("without the header: FaultDelay %v, %v; want none", tg.FaultDelay, err)
	}
	tg.Done(engine.Result{})
	tg, err = d.Direct(context.Background(), req("/s.S/Slow"))
	if err != nil || tg.FaultDelay != time.Second {
		t.Fatalf("delay: FaultDelay %v, %v; want 1s", tg.FaultDelay, err)
	}
	tg.Done(engine.Result{})
	var kinds []string
	for _, c := range rec.calls {
		kinds = append(kinds, c.Route+":"+c.Fault)
	}
	if got, want := strings.Join(kinds, " "), "abort:abort abort:abort abort:abort delay: slow:delay"; got != want {
		t.Fatalf("records %s, want %s", got, want)
	}
}

// mirrorRecorder records ObserveMirror.
type mirrorRecorder struct {
	recorder
	results []string
}

func (m *mirrorRecorder) ObserveMirror(route, result string) {
	m.results = append(m.results, route+":"+result)
}

// TestDirectMirror: a sampled call carries a Mirror to the mirror
// cluster's endpoint, whose outcome is observed and whose run is counted
// on the State until it ends; a mirror cluster without endpoints costs
// only the copy.
func TestDirectMirror(t *testing.T) {
	t.Parallel()
	routes := []config.Route{
		{Name: "copied", Match: config.Match{Method: "/s.S/Copied"}, Cluster: "c"},
		{Name: "nowhere", Match: config.Match{Method: "/s.S/Nowhere"}, Cluster: "c"},
	}
	pols := map[string]*policy.Route{
		"copied":  {Name: "copied", Mirror: &policy.Mirror{Cluster: "shadow", Percent: 100}},
		"nowhere": {Name: "nowhere", Mirror: &policy.Mirror{Cluster: "empty", Percent: 100}},
	}
	table, err := router.New(routes, router.WithPolicy(func(r config.Route) *policy.Route { return pols[r.Name].Init() }))
	if err != nil {
		t.Fatal(err)
	}
	rec := &mirrorRecorder{}
	d := New(WithObserver(rec))
	st := &State{Table: table, Clusters: map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1"),
		"shadow": cluster(t, "shadow", "127.0.0.1:2"), "empty": cluster(t, "empty")},
		Limits: map[string]*policy.Limiter{}, Budgets: map[string]*policy.RetryBudget{}}
	d.Swap(st)
	req := func(method string) *engine.Request { return &engine.Request{Method: method, Header: &engine.Header{}} }

	tg, err := d.Direct(context.Background(), req("/s.S/Copied"))
	if err != nil || tg.Mirror == nil || tg.Mirror.Addr != "127.0.0.1:2" || tg.Addr != "127.0.0.1:1" {
		t.Fatalf("copied: %+v %v", tg, err)
	}
	tg.Done(engine.Result{})
	if st.Active() != 1 {
		t.Fatalf("State counts %d calls while the copy runs, want 1", st.Active())
	}
	tg.Mirror.Done(engine.MirrorAnswered)
	tg, err = d.Direct(context.Background(), req("/s.S/Nowhere"))
	if err != nil || tg.Mirror != nil {
		t.Fatalf("nowhere: %+v %v, want the call without a copy", tg, err)
	}
	tg.Done(engine.Result{})
	if st.Active() != 0 {
		t.Fatalf("State counts %d calls after every end", st.Active())
	}
	if got := strings.Join(rec.results, " "); got != "copied:answered nowhere:no_endpoint" {
		t.Fatalf("mirror results %q", got)
	}
}
