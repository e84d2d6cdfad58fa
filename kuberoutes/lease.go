package kuberoutes

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/meshd/meshd/internal/kubeobj"
)

// elector is a leader election over a coordination.k8s.io/v1 Lease, read
// and written through the dynamic client, with client-go leaderelection's
// rules (client-go's own pulls in the typed clientset): a replica takes
// the Lease when it is free (no holder) or when the record it saw has not
// changed for the record's lease duration, by its own clock; the holder
// renews every retry period and stops leading when it could not renew
// within the renew deadline; it releases the Lease when stopped. Its
// fields are used by the one goroutine that calls run.
type elector struct {
	leases                                    dynamic.ResourceInterface
	name, identity                            string
	leaseDuration, renewDeadline, retryPeriod time.Duration
	log                                       *slog.Logger

	observed     coordinationv1.LeaseSpec // the last record seen
	observedTime time.Time                // when it was first seen
}

// run stands for the Lease until it is acquired, then calls started and
// renews the Lease until a renewal fails for the renew deadline or ctx is
// done (then it releases the Lease). It returns when this replica does
// not (or no longer) lead.
func (e *elector) run(ctx context.Context, started func()) {
	for !e.tryAcquireOrRenew(ctx) {
		// client-go's jitter: up to 1.2 retry periods more.
		wait := e.retryPeriod + time.Duration(rand.Float64()*1.2*float64(e.retryPeriod))
		if !sleep(ctx, wait) {
			return
		}
	}
	started()
	for {
		if !sleep(ctx, e.retryPeriod) {
			e.release()
			return
		}
		if !e.renew(ctx) {
			if ctx.Err() != nil {
				e.release()
				return
			}
			e.log.Warn("lost the GRPCRoute status Lease", "identity", e.identity)
			return
		}
	}
}

// renew tries to renew the Lease every retry period until it succeeds or
// the renew deadline (or ctx) ends.
func (e *elector) renew(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, e.renewDeadline)
	defer cancel()
	for {
		if e.tryAcquireOrRenew(rctx) {
			return true
		}
		if !sleep(rctx, e.retryPeriod) {
			return false
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// tryAcquireOrRenew creates the Lease, or takes or renews it, once.
func (e *elector) tryAcquireOrRenew(ctx context.Context) bool {
	now := time.Now()
	mnow := metav1.NewMicroTime(now.Truncate(time.Microsecond))
	spec := coordinationv1.LeaseSpec{
		HolderIdentity:       &e.identity,
		LeaseDurationSeconds: newPtr(int32(e.leaseDuration / time.Second)),
		AcquireTime:          &mnow,
		RenewTime:            &mnow,
		LeaseTransitions:     newPtr(int32(0)),
	}
	obj, err := e.leases.Get(ctx, e.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.name}, Spec: spec}
		u, err := kubeobj.To(l, "coordination.k8s.io/v1", "Lease")
		if err == nil {
			_, err = e.leases.Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil {
			e.log.Debug("creating the GRPCRoute status Lease failed", "err", err)
			return false
		}
		e.observed, e.observedTime = spec, now
		return true
	}
	if err != nil {
		e.log.Debug("reading the GRPCRoute status Lease failed", "err", err)
		return false
	}
	l, err := kubeobj.From[coordinationv1.Lease](obj)
	if err != nil {
		e.log.Warn("GRPCRoute status Lease unreadable", "err", err)
		return false
	}
	if !equality.Semantic.DeepEqual(record(l.Spec), e.observed) {
		e.observed, e.observedTime = record(l.Spec), now
	}
	holder := value(l.Spec.HolderIdentity)
	d := time.Duration(value(l.Spec.LeaseDurationSeconds)) * time.Second
	if holder != "" && holder != e.identity && e.observedTime.Add(d).After(now) {
		return false // held by another replica
	}
	if holder == e.identity {
		spec.AcquireTime = l.Spec.AcquireTime
		spec.LeaseTransitions = newPtr(value(l.Spec.LeaseTransitions))
	} else {
		spec.LeaseTransitions = newPtr(value(l.Spec.LeaseTransitions) + 1)
	}
	if !e.update(ctx, l, spec) {
		return false
	}
	e.observed, e.observedTime = spec, now
	return true
}

// release gives the Lease up if this replica holds it, as client-go does:
// no holder, a lease duration of one second.
func (e *elector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), e.renewDeadline)
	defer cancel()
	for ctx.Err() == nil {
		obj, err := e.leases.Get(ctx, e.name, metav1.GetOptions{})
		if err != nil {
			return
		}
		l, err := kubeobj.From[coordinationv1.Lease](obj)
		if err != nil || value(l.Spec.HolderIdentity) != e.identity {
			return
		}
		now := metav1.NewMicroTime(time.Now())
		spec := coordinationv1.LeaseSpec{
			HolderIdentity:       newPtr(""),
			LeaseDurationSeconds: newPtr(int32(1)),
			AcquireTime:          &now,
			RenewTime:            &now,
			LeaseTransitions:     newPtr(value(l.Spec.LeaseTransitions)),
		}
		err = e.write(ctx, l, spec)
		if err == nil {
			e.observed = spec
			return
		}
		if !apierrors.IsConflict(err) {
			e.log.Warn("releasing the GRPCRoute status Lease failed", "err", err)
			return
		}
	}
}

func (e *elector) update(ctx context.Context, l *coordinationv1.Lease, spec coordinationv1.LeaseSpec) bool {
	if err := e.write(ctx, l, spec); err != nil {
		e.log.Debug("writing the GRPCRoute status Lease failed", "err", err)
		return false
	}
	return true
}

// write replaces l's record with spec (fields meshd does not set are
// kept), failing on a conflict if l is no longer the current object.
func (e *elector) write(ctx context.Context, l *coordinationv1.Lease, spec coordinationv1.LeaseSpec) error {
	up := l.DeepCopy()
	up.Spec.HolderIdentity = spec.HolderIdentity
	up.Spec.LeaseDurationSeconds = spec.LeaseDurationSeconds
	up.Spec.AcquireTime = spec.AcquireTime
	up.Spec.RenewTime = spec.RenewTime
	up.Spec.LeaseTransitions = spec.LeaseTransitions
	u, err := kubeobj.To(up, "coordination.k8s.io/v1", "Lease")
	if err != nil {
		return err
	}
	_, err = e.leases.Update(ctx, u, metav1.UpdateOptions{})
	return err
}

func newPtr[T any](v T) *T { return &v }

func value[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// record is the part of a Lease's spec the election reads and writes.
func record(s coordinationv1.LeaseSpec) coordinationv1.LeaseSpec {
	return coordinationv1.LeaseSpec{HolderIdentity: s.HolderIdentity, LeaseDurationSeconds: s.LeaseDurationSeconds,
		AcquireTime: s.AcquireTime, RenewTime: s.RenewTime, LeaseTransitions: s.LeaseTransitions}
}
