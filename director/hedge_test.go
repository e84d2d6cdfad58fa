package director

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/balancer"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// TestHedgeDirect: a hedged route's Target carries the hedge with the
// call as its Hedger: one hedged attempt on the other endpoint, within
// retry.attempts; policy.Fatal's verdicts; and the call reported with the
// winning attempt's endpoint once the first attempt lost.
func TestHedgeDirect(t *testing.T) {
	t.Parallel()
	routes := []config.Route{{Name: "hedged", Match: config.Match{Method: "/s.S/Hedged"}, Cluster: "c"}}
	pol := &policy.Route{Name: "hedged", Hedge: &policy.Hedge{Delay: 20 * time.Millisecond, MaxAttempts: 2},
		Retry: &policy.Retry{Attempts: 2, RetryOn: []codes.Code{codes.Unavailable}, MaxBufferBytes: 1024}}
	table, err := router.New(routes, router.WithPolicy(func(config.Route) *policy.Route { return pol.Init() }))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := New(WithObserver(rec))
	st := &State{Table: table, Clusters: map[string]*balancer.Cluster{"c": cluster(t, "c", "127.0.0.1:1", "127.0.0.1:2")},
		Limits: map[string]*policy.Limiter{"c": policy.NewLimiter(0, 0).WithLimits("c", 0, 0)}, Budgets: map[string]*policy.RetryBudget{}}
	d.Swap(st)

	tg, err := d.Direct(context.Background(), &engine.Request{Method: "/s.S/Hedged", Header: &engine.Header{}})
	if err != nil || tg.Hedge == nil || tg.Retry == nil || tg.RetryBufferBytes != 1024 {
		t.Fatalf("hedged: %+v, %v", tg, err)
	}
	if tg.Hedge.Delay != 20*time.Millisecond || tg.Hedge.MaxAttempts != 2 {
		t.Fatalf("hedge %+v", *tg.Hedge)
	}
	h := tg.Hedge.Hedger
	next, id, ok := h.Hedge()
	if !ok || id != 1 || next.Addr == tg.Addr || next.Addr == "" {
		t.Fatalf("hedge: ok=%v id %d to %q (first %q)", ok, id, next.Addr, tg.Addr)
	}
	prev := ""
	for _, f := range next.Header {
		if f.Name == "grpc-previous-rpc-attempts" {
			prev = f.Value
		}
	}
	if prev != "1" {
		t.Errorf("hedged attempt's grpc-previous-rpc-attempts %q, want 1", prev)
	}
	if _, _, ok := h.Hedge(); ok {
		t.Error("a third attempt past retry.attempts 2")
	}
	for code, want := range map[codes.Code]bool{codes.Unavailable: false, codes.Internal: true, codes.OK: true} {
		if got := h.Fatal(engine.Result{Code: code}); got != want {
			t.Errorf("Fatal(%v) = %v, want %v", code, got, want)
		}
	}
	h.Ended(0, engine.Result{Code: codes.Canceled, Err: engine.ErrHedgeLost})
	tg.Done(engine.Result{Code: codes.OK, Attempt: 1})
	if st.Active() != 0 {
		t.Fatalf("%d calls still counted after Done", st.Active())
	}
	if len(rec.calls) != 1 {
		t.Fatalf("%d calls reported, want 1", len(rec.calls))
	}
	if c := rec.calls[0]; c.Code != codes.OK || c.Attempts != 2 || c.Endpoint != next.Addr {
		t.Errorf("reported %s after %d attempts on %s, want OK after 2 on the hedged attempt's %s", c.Code, c.Attempts, c.Endpoint, next.Addr)
	}
}
