package kuberoutes

import (
	"context"
	"log/slog"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/internal/kubetest"
)

// runElector runs e until the returned stop is called; started is closed
// when e leads, done when run returned.
func runElector(e *elector) (started, done chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	started, done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		e.run(ctx, func() { close(started) })
	}()
	return started, done, func() { cancel(); <-done }
}

func newTestElector(env *kubetest.Env, ns, identity string, d time.Duration) *elector {
	return &elector{
		leases: env.Dynamic.Resource(leasesResource).Namespace(ns), name: "status", identity: identity,
		leaseDuration: d, renewDeadline: d * 2 / 3, retryPeriod: 100 * time.Millisecond,
		log: slog.New(slog.DiscardHandler),
	}
}

func getLease(t *testing.T, env *kubetest.Env, ns string) *coordinationv1.Lease {
	t.Helper()
	l, err := env.Kube.CoordinationV1().Leases(ns).Get(context.Background(), "status", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitClosed(t *testing.T, c chan struct{}, d time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-c:
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
		return 0
	}
}

// TestLeaseElection: one of two replicas leads and renews; when it stops
// it releases the Lease and the other takes it at once, not after the
// lease duration.
func TestLeaseElection(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t, "lease")
	const d = 4 * time.Second
	aStarted, _, stopA := runElector(newTestElector(env, ns, "a", d))
	defer stopA()
	waitClosed(t, aStarted, 5*time.Second, "a leads")
	bStarted, _, stopB := runElector(newTestElector(env, ns, "b", d))
	defer stopB()
	first := getLease(t, env, ns)
	// Two lease durations: a renews, b waits.
	select {
	case <-bStarted:
		t.Fatal("b leads while a holds the Lease")
	case <-time.After(2 * d):
	}
	l := getLease(t, env, ns)
	if h := value(l.Spec.HolderIdentity); h != "a" {
		t.Fatalf("holder %q, want a", h)
	}
	if !l.Spec.RenewTime.After(first.Spec.RenewTime.Time) {
		t.Fatalf("a did not renew: %v then %v", first.Spec.RenewTime, l.Spec.RenewTime)
	}
	stopA()
	took := waitClosed(t, bStarted, d/2, "b leads after a released the Lease")
	t.Logf("b took the released Lease after %v", took)
	l = getLease(t, env, ns)
	if h, n := value(l.Spec.HolderIdentity), value(l.Spec.LeaseTransitions); h != "b" || n != 1 {
		t.Fatalf("holder %q, transitions %d; want b, 1", h, n)
	}
	stopB()
	if h := value(getLease(t, env, ns).Spec.HolderIdentity); h != "" {
		t.Fatalf("holder %q after b stopped, want none", h)
	}
}

// TestLeaseExpired: a Lease whose holder stopped renewing without
// releasing it is taken once its record has not changed for its lease
// duration.
func TestLeaseExpired(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t, "lease-expired")
	now := metav1.NewMicroTime(time.Now())
	ghost := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "status", Namespace: ns}, Spec: coordinationv1.LeaseSpec{
		HolderIdentity: newPtr("ghost"), LeaseDurationSeconds: newPtr(int32(2)), AcquireTime: &now, RenewTime: &now,
		LeaseTransitions: newPtr(int32(3)),
	}}
	if _, err := env.Kube.CoordinationV1().Leases(ns).Create(context.Background(), ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	started, _, stop := runElector(newTestElector(env, ns, "c", 3*time.Second))
	defer stop()
	waitClosed(t, started, 10*time.Second, "c leads")
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("c took a live Lease after %v", took)
	}
	l := getLease(t, env, ns)
	if h, n := value(l.Spec.HolderIdentity), value(l.Spec.LeaseTransitions); h != "c" || n != 4 || value(l.Spec.LeaseDurationSeconds) != 3 {
		t.Fatalf("lease %+v; want holder c, 4 transitions, 3s", l.Spec)
	}
}
