// Package policy decides, once, what happens to a call beyond where it is
// routed and which endpoint serves it: admission (a route's rate limit, a
// cluster's max_requests and max_pending), time budgets (route timeout,
// max_grpc_timeout, idle and per-try timeouts), the retry decision and the
// retry budget, fault injection (Fault.Decide), and the statuses meshd
// answers with when it refuses or ends a call itself.
//
// A route's policy is an immutable value (Route) built when a config is
// applied and reached from the matched route. The decisions are pure
// functions (Admit, Route.Budget, Decide) with table tests; the director
// calls them and the engine carries them out. Nothing here does I/O,
// blocks or knows about HTTP/2.
package policy
