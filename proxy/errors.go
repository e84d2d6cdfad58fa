package proxy

import (
	"context"
	"errors"
	"fmt"

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

// upstreamErr turns an error from the upstream stream into what the client
// sees. ctx is the call's context at meshd: if its deadline (the client's or
// the route's) is what ended the call, the answer is DEADLINE_EXCEEDED,
// whatever the transport said.
func upstreamErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "meshd: deadline exceeded")
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return status.Error(codes.Canceled, "meshd: call cancelled by the client")
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("meshd: upstream: %v", err))
}
