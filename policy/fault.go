package policy

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Fault is a route's fault injection, for resilience drills (Envoy's and
// Istio's fault filter, gRFC A33): a share of the route's calls is delayed
// before it goes upstream, a share is answered at once with an error, as
// if a backend had failed. A nil *Fault injects nothing.
type Fault struct {
	// Delay is how long a delayed call waits before its first attempt
	// opens; DelayPercent the share of calls delayed (0..100).
	Delay        time.Duration
	DelayPercent float64
	// AbortCode is the status an aborted call gets; AbortPercent the share
	// of calls aborted (0..100).
	AbortCode    codes.Code
	AbortPercent float64
	// Header, if set, limits both to calls that carry this metadata key
	// (any value): a drill that only its own traffic sees.
	Header string

	abortErr error
}

// FaultKind names an injected fault, for metrics and spans.
type FaultKind string

// The faults Decide injects.
const (
	FaultNone  FaultKind = ""
	FaultDelay FaultKind = "delay"
	FaultAbort FaultKind = "abort"
)

// init builds the abort status once; route is the route's name, which the
// message names so that nobody mistakes a drill for an outage.
func (f *Fault) init(route string) {
	if f.AbortPercent > 0 {
		f.abortErr = status.Errorf(f.AbortCode, "meshd: fault injected by route %s", route)
	}
}

// Decide is the one fault decision for a call on a route with fault
// (f nil: none). hasHeader reports whether the call carries f.Header
// (ignored when Header is ""); delayRoll and abortRoll are independent
// uniform draws in [0, 100). An abort wins: the call is answered at once
// with err, without a delay and without reaching a backend. Otherwise the
// call may be delayed by d before its first attempt.
func (f *Fault) Decide(hasHeader bool, delayRoll, abortRoll float64) (kind FaultKind, d time.Duration, err error) {
	if f == nil || (f.Header != "" && !hasHeader) {
		return FaultNone, 0, nil
	}
	if abortRoll < f.AbortPercent {
		return FaultAbort, 0, f.abortErr
	}
	if delayRoll < f.DelayPercent {
		return FaultDelay, f.Delay, nil
	}
	return FaultNone, 0, nil
}
