package policy

import (
	"slices"
	"time"

	"google.golang.org/grpc/codes"
)

// Hedge is a route's hedging policy: after Delay without response
// headers another attempt starts on another endpoint, up to MaxAttempts in
// flight at once (the first included); the first attempt whose response
// commits wins. A nil *Hedge hedges nothing.
//
// A hedged route is always a retrying one (Route.Retry is set: the
// configured retry, or, for hedge alone, ImplicitRetry): the attempts
// replay the request from the retry buffer, the route's retry.attempts
// bounds all attempts of a call, hedged ones included, and each hedged
// attempt takes a retry from the cluster's budget.
type Hedge struct {
	Delay       time.Duration
	MaxAttempts int
}

// Fatal reports whether code, the status one attempt of a hedged call
// ended with, ends the call at once with every other attempt cancelled
// (gRFC A6: a non-retryable status). Statuses in r's retry_on are not
// fatal: the attempts still in flight carry the call on, and once none is
// left Decide rules as for any failed attempt.
func Fatal(r *Retry, code codes.Code) bool {
	return r == nil || !slices.Contains(r.RetryOn, code)
}
