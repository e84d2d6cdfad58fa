package policy

import (
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The statuses meshd produces itself. Every meshd-made error a client can
// see that is not about the HTTP/2 transport (those are the engine's) is
// built here, so the code for each condition is decided once: no route
// UNIMPLEMENTED, no healthy endpoint UNAVAILABLE, a deadline spent inside
// meshd DEADLINE_EXCEEDED, limits RESOURCE_EXHAUSTED.

// ErrNoRoute: no route matches the call.
func ErrNoRoute(method string) error {
	return status.Errorf(codes.Unimplemented, "meshd: no route for method %s", method)
}

// ErrUnknownCluster: the route names a cluster the State does not hold.
func ErrUnknownCluster(route, cluster string) error {
	return status.Errorf(codes.Unavailable, "meshd: route %q points at cluster %q, which is not loaded", route, cluster)
}

// ErrNoEndpoint: the cluster had no endpoint to pick.
func ErrNoEndpoint(cluster string, err error) error {
	return status.Errorf(codes.Unavailable, "meshd: no healthy endpoint in cluster %q: %v", cluster, err)
}

// ErrNotReady: no configuration is loaded yet.
func ErrNotReady() error {
	return status.Error(codes.Unavailable, "meshd: no configuration loaded yet")
}

// errMaxRequests: the cluster's max_requests calls are in flight.
func errMaxRequests(cluster string, max int64) error {
	return status.Errorf(codes.ResourceExhausted, "meshd: cluster %q is at max_requests (%d calls in flight); not queued", cluster, max)
}

// errMaxPending: max_pending calls already wait for an upstream stream.
func errMaxPending(cluster string, max int64) error {
	return status.Errorf(codes.ResourceExhausted, "meshd: cluster %q is at max_pending (%d calls waiting for an upstream stream); not queued", cluster, max)
}

// errRateLimited: the route's token bucket is empty.
func errRateLimited(route string, perSecond float64) error {
	return status.Errorf(codes.ResourceExhausted, "meshd: route %q is over its rate limit of %g calls/s", route, perSecond)
}

// The settings a timeout status names.
const (
	settingTimeout = "route timeout"
	settingMaxGRPC = "deadline capped by max_grpc_timeout"
	settingPerTry  = "per_try_timeout"
	settingIdle    = "idle_timeout"
)

// timeoutStatus is the status of a call one of meshd's timeouts ended.
// Every such timeout is DEADLINE_EXCEEDED, never UNAVAILABLE: the backend
// may be perfectly healthy, and clients treat the two differently.
func timeoutStatus(setting string, d time.Duration) error {
	if setting == settingIdle {
		return status.Errorf(codes.DeadlineExceeded, "meshd: no message in either direction for idle_timeout %s", d)
	}
	return status.Error(codes.DeadlineExceeded, fmt.Sprintf("meshd: %s %s exceeded", setting, d))
}

// ErrDenied: the mesh's intentions do not allow source (a SPIFFE ID, or
// "" for a plaintext caller) to call destination. The message names both
// and never the rule, whose internals are the operator's business.
func ErrDenied(source, destination string) error {
	if source == "" {
		source = "an unauthenticated caller"
	}
	return status.Errorf(codes.PermissionDenied, "meshd: %s is not allowed to call %s", source, destination)
}

// ErrUnauthenticated: the route requires a token and the call's is missing
// or invalid. reason is the verifier's www-authenticate-style message
// ("meshd: jwt: token expired"); it never holds the token.
func ErrUnauthenticated(reason string) error {
	return status.Error(codes.Unauthenticated, reason)
}
