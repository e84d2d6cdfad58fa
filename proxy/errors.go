package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The statuses meshd produces itself. Every meshd-made error a client can see
// is built here, so the code for each condition is decided once.

func errNoRoute(method string) error {
	return status.Errorf(codes.Unimplemented, "meshd: no route for method %s", method)
}

func errUnknownCluster(route, cluster string) error {
	return status.Errorf(codes.Unavailable, "meshd: route %q points at cluster %q, which is not loaded", route, cluster)
}

func errNoEndpoint(cluster string, err error) error {
	return status.Errorf(codes.Unavailable, "meshd: no healthy endpoint in cluster %q: %v", cluster, err)
}

func errNotReady() error {
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

// timeoutError is the cause meshd gives a context it ends for a timeout of
// its own, so the status can name the setting that fired. Every such
// timeout is DEADLINE_EXCEEDED, never UNAVAILABLE: the backend may be
// perfectly healthy, and clients treat the two differently.
type timeoutError struct {
	setting string // "route timeout", "per_try_timeout", ...
	d       time.Duration
}

func (e *timeoutError) Error() string {
	if e.setting == settingIdle {
		return fmt.Sprintf("meshd: no message in either direction for idle_timeout %s", e.d)
	}
	return fmt.Sprintf("meshd: %s %s exceeded", e.setting, e.d)
}

// The settings a timeoutError names.
const (
	settingTimeout = "route timeout"
	settingMaxGRPC = "deadline capped by max_grpc_timeout"
	settingPerTry  = "per_try_timeout"
	settingIdle    = "idle_timeout"
)

// timeoutErrs are a route's timeout statuses as status errors, for the
// frame engine (RoutePolicy.timeoutErr): built once, shared by its calls.
type timeoutErrs struct {
	timeout, maxGRPC       time.Duration // the route's settings they name
	timeoutErr, maxGRPCErr error         // nil where the setting is 0
}

func newTimeoutErrs(timeout, maxGRPC time.Duration) *timeoutErrs {
	e := &timeoutErrs{timeout: timeout, maxGRPC: maxGRPC}
	if timeout > 0 {
		e.timeoutErr = timeoutStatus(&timeoutError{setting: settingTimeout, d: timeout})
	}
	if maxGRPC > 0 {
		e.maxGRPCErr = timeoutStatus(&timeoutError{setting: settingMaxGRPC, d: maxGRPC})
	}
	return e
}

// callLimitErrs are a route's idle_timeout and per_try_timeout statuses as
// status errors, for the frame engine (RoutePolicy.callLimitErrs): built
// once, shared by its calls. nil where the setting is off.
type callLimitErrs struct {
	idle, perTry error
}

// callLimitErrs returns the route's idle and per-try statuses, building
// them on the route's first call; the policy's settings never change.
func (pol *RoutePolicy) callLimitErrs() *callLimitErrs {
	if e := pol.limits.Load(); e != nil {
		return e
	}
	e := &callLimitErrs{}
	if d := pol.IdleTimeout; d > 0 {
		e.idle = timeoutStatus(&timeoutError{setting: settingIdle, d: d})
	}
	if r := pol.Retry; r != nil && r.PerTryTimeout > 0 {
		e.perTry = timeoutStatus(&timeoutError{setting: settingPerTry, d: r.PerTryTimeout})
	}
	pol.limits.CompareAndSwap(nil, e)
	return pol.limits.Load()
}

// timeoutStatus is the status a client gets for te.
func timeoutStatus(te *timeoutError) error {
	return status.Error(codes.DeadlineExceeded, te.Error())
}

// timeoutOf returns the meshd timeout that ended ctx, or nil.
func timeoutOf(ctx context.Context) *timeoutError {
	if ctx.Err() == nil {
		return nil
	}
	var te *timeoutError
	if errors.As(context.Cause(ctx), &te) {
		return te
	}
	return nil
}

// deadlineOwner records which meshd setting set a context's deadline, so
// that an upstream DEADLINE_EXCEEDED caused by that deadline can name it.
type deadlineOwner struct {
	te       *timeoutError
	deadline time.Time
}

type deadlineOwnerKey struct{}

// withDeadlineOwner marks ctx's deadline as set by te.
func withDeadlineOwner(ctx context.Context, te *timeoutError) context.Context {
	dl, _ := ctx.Deadline()
	return context.WithValue(ctx, deadlineOwnerKey{}, deadlineOwner{te: te, deadline: dl})
}

// ownerSlack is how early a backend may end a call for the deadline meshd
// propagated and still be counted as ending it for that deadline:
// grpc-timeout is encoded with truncation, and the backend's timer can fire
// just before meshd's own.
const ownerSlack = 50 * time.Millisecond

// ownedDeadline returns the meshd timeout behind a backend's
// DEADLINE_EXCEEDED: the setting that still owns ctx's deadline, when that
// deadline is (nearly) reached. nil otherwise, e.g. for a backend's own
// internal timeout far from meshd's deadline.
func ownedDeadline(ctx context.Context) *timeoutError {
	o, ok := ctx.Value(deadlineOwnerKey{}).(deadlineOwner)
	if !ok {
		return nil
	}
	if dl, ok := ctx.Deadline(); !ok || !dl.Equal(o.deadline) || time.Until(dl) > ownerSlack {
		return nil
	}
	return o.te
}

// upstreamErr turns an error from the upstream stream into what the client
// sees. ctx is the call's (or attempt's) context at meshd: if one of meshd's
// timeouts or the deadline (the client's or the route's) is what ended the
// call, the answer is DEADLINE_EXCEEDED, whatever the transport said.
func upstreamErr(ctx context.Context, err error) error {
	if te := timeoutOf(ctx); te != nil {
		return status.Error(codes.DeadlineExceeded, te.Error())
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "meshd: deadline exceeded")
	}
	if status.Code(err) == codes.DeadlineExceeded {
		// The backend's timer for the deadline meshd sent it fired a
		// moment before meshd's own: the same timeout, so name it.
		if te := ownedDeadline(ctx); te != nil {
			return status.Error(codes.DeadlineExceeded, te.Error())
		}
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return status.Error(codes.Canceled, "meshd: call cancelled by the client")
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("meshd: upstream: %v", err))
}
