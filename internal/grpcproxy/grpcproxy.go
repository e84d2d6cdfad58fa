// Package grpcproxy is github.com/mwitkow/grpc-proxy wired the way its
// README shows: a grpc.Server whose grpc.UnknownServiceHandler is
// proxy.TransparentHandler with a director that forwards every call, with
// the incoming metadata copied, to one backend connection. It is what meshd
// replaces, kept in one place so the load harness (cmd/meshbench, target
// grpc-proxy) and the tests that show how it differs from meshd
// (test/grpcproxy_test.go) run the same proxy.
//
// What its handler does per call (proxy/handler.go at the pinned version):
// it opens a client stream to the backend and runs two goroutines that
// copy messages with RecvMsg/SendMsg into an *emptypb.Empty. Every message
// is therefore decoded by grpc-go's proto codec into Empty's unknown
// fields and encoded again (a parse and a copy per message each way); the
// package's raw codec (proxy.Codec, now deprecated) is not used by the
// handler. Response headers are sent to the client only after the first
// backend message arrived, so a call that fails before any message loses
// its response headers (its trailers are forwarded).
package grpcproxy

import (
	"context"

	"github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Director sends every call to backend with the incoming metadata copied
// to the outgoing call, as the package's ExampleStreamDirector does.
func Director(backend grpc.ClientConnInterface) proxy.StreamDirector {
	return func(ctx context.Context, _ string) (context.Context, grpc.ClientConnInterface, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return metadata.NewOutgoingContext(ctx, md.Copy()), backend, nil
	}
}

// NewServer is a grpc.Server that proxies every call (no service is
// registered on it) to backend through proxy.TransparentHandler. opts are
// added first, so a test may set a codec or limits.
func NewServer(backend grpc.ClientConnInterface, opts ...grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.UnknownServiceHandler(proxy.TransparentHandler(Director(backend))))
	return grpc.NewServer(opts...)
}
