package balancer

// Panic mode and all_down: which endpoints a rebuilt picker balances over.
//
// Normally the picker holds the serving endpoints. Panic mode (Envoy's
// healthy_panic_threshold) widens it when too few endpoints are serving:
// the health verdicts are then more likely wrong, or about overload, than
// a reason to pile every call onto the few left. all_down is the last
// resort, for when neither gives anything to pick.
//
// meshd departs from Envoy in what panic mode counts and spreads over, so
// that it never sends calls where they can only fail:
//
//   - An endpoint still awaiting its first health verdict ("pending": just
//     discovered, or meshd just started) counts neither as healthy nor as
//     unhealthy, and gets no calls in panic mode. Otherwise a scale-up, or
//     meshd starting before its backends, would put the cluster in panic
//     and send calls to backends that may not even listen yet (Envoy's
//     ignore_new_hosts_until_first_hc does the same).
//   - An endpoint meshd cannot reach (its connection is refused, broken or
//     timed out: healthwatch Report.Unreachable) counts as unhealthy, but
//     gets no calls in panic mode: a call there could only fail, or wait
//     for a connect timeout first.
//
// So panic mode spreads calls over the endpoints that answered: serving,
// those that said NOT_SERVING, and those outlier detection ejected.

// class is what an endpoint contributes to the picker's endpoint set.
type class int

const (
	// classServing: serving and not ejected; always pickable.
	classServing class = iota
	// classAnswered: judged unhealthy by an answer (NOT_SERVING, or an
	// outlier ejection); pickable in panic mode.
	classAnswered
	// classUnreachable: NotServing because meshd cannot reach it; counted
	// as unhealthy, never picked but by all_down any.
	classUnreachable
	// classPending: no health verdict yet; not counted, never picked but
	// by all_down any.
	classPending
)

// class classifies a live endpoint. Called on the update loop.
func (e *Endpoint) class() class {
	switch {
	case e.health == healthPending:
		return classPending
	case e.health == healthNotServing && e.healthUnreachable:
		return classUnreachable
	case e.pickable():
		return classServing
	default:
		return classAnswered
	}
}

// inPanic says whether serving of judged endpoints is below threshold
// percent. judged counts the endpoints with a verdict (serving, answered
// and unreachable); threshold 0 never panics, and neither does a cluster
// with no verdict at all.
func inPanic(serving, judged, threshold int) bool {
	return threshold > 0 && judged > 0 && serving*100 < threshold*judged
}

// pickSet returns the endpoints a picker should balance over, in the order
// of live (sorted by ID), and whether the cluster is in panic mode:
//
//   - the serving endpoints, when their share of the endpoints with a
//     verdict is at least threshold percent (always, with threshold 0);
//   - in panic mode, the serving and answered endpoints;
//   - when that is empty and allDownAny, every live endpoint;
//   - otherwise none: Pick fails with ErrNoEndpoint.
//
// It is a pure function of the endpoints' classes, called on the update
// loop.
func pickSet(live []*Endpoint, threshold int, allDownAny bool) (eps []*Endpoint, panicking bool) {
	serving, judged := 0, 0
	classes := make([]class, len(live))
	for i, e := range live {
		classes[i] = e.class()
		switch classes[i] {
		case classServing:
			serving++
			judged++
		case classAnswered, classUnreachable:
			judged++
		}
	}
	panicking = inPanic(serving, judged, threshold)
	eps = make([]*Endpoint, 0, len(live))
	for i, e := range live {
		if classes[i] == classServing || panicking && classes[i] == classAnswered {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 && allDownAny {
		eps = append(eps, live...)
	}
	return eps, panicking
}
