package kuberoutes

import (
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ControllerName is the controllerName meshd writes in GRPCRoute
// status.parents[] (a domain-prefixed path, as the spec requires).
const ControllerName gwv1.GatewayController = "meshd.io/gateway-controller"

// desiredStatus returns gr's status with meshd's entries set from v (and
// rejected, the reason the server refused the route's rules, if any);
// other controllers' entries are kept as they are. Condition transition
// times are kept from the current entries when the condition's status
// did not change, so an unchanged verdict gives an equal status and no
// write.
func desiredStatus(gr *gwv1.GRPCRoute, v Verdict, rejected string, now metav1.Time) gwv1.RouteStatus {
	var out gwv1.RouteStatus
	var mine []gwv1.RouteParentStatus
	for _, p := range gr.Status.Parents {
		if p.ControllerName == ControllerName {
			mine = append(mine, p)
		} else {
			out.Parents = append(out.Parents, p)
		}
	}
	for _, pv := range v.Parents {
		var prev []metav1.Condition
		for _, p := range mine {
			if equality.Semantic.DeepEqual(p.ParentRef, pv.Ref) {
				prev = p.Conditions
			}
		}
		accepted := metav1.Condition{Type: string(gwv1.RouteConditionAccepted), Status: metav1.ConditionTrue,
			Reason: string(gwv1.RouteReasonAccepted), Message: "meshd serves this route", ObservedGeneration: v.Generation}
		switch {
		case pv.NotAccepted != "":
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, pv.NotAccepted, pv.Message
		case v.Unsupported != "":
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gwv1.RouteReasonUnsupportedValue), v.Unsupported
		case rejected != "":
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gwv1.RouteReasonUnsupportedValue), "meshd refused the rules: "+rejected
		}
		resolved := metav1.Condition{Type: string(gwv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue,
			Reason: string(gwv1.RouteReasonResolvedRefs), Message: "every backendRef resolved", ObservedGeneration: v.Generation}
		if v.RefsReason != "" {
			resolved.Status, resolved.Reason, resolved.Message = metav1.ConditionFalse, v.RefsReason, v.RefsMessage
		}
		conds := slices.Clone(prev)
		for _, c := range []metav1.Condition{accepted, resolved} {
			c.LastTransitionTime = now
			if old := meta.FindStatusCondition(prev, c.Type); old != nil && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
			meta.SetStatusCondition(&conds, c)
		}
		// SetStatusCondition keeps LastTransitionTime when the status did
		// not change, which is the rule above; conditions of other types
		// meshd never sets are dropped.
		conds = slices.DeleteFunc(conds, func(c metav1.Condition) bool {
			return c.Type != string(gwv1.RouteConditionAccepted) && c.Type != string(gwv1.RouteConditionResolvedRefs)
		})
		out.Parents = append(out.Parents, gwv1.RouteParentStatus{ParentRef: pv.Ref, ControllerName: ControllerName, Conditions: conds})
	}
	if out.Parents == nil {
		out.Parents = []gwv1.RouteParentStatus{}
	}
	return out
}

// statusEqual compares statuses as the API stores them (nil and empty
// parent lists are the same).
func statusEqual(a, b gwv1.RouteStatus) bool {
	if len(a.Parents) == 0 && len(b.Parents) == 0 {
		return true
	}
	return equality.Semantic.DeepEqual(a, b)
}
