package testkit

import (
	"context"
	"testing"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// OpenStream opens a FullDuplexCall on client and completes one round trip
// (a request for a 1-byte message, and the message), so that the stream is
// admitted and open end to end when it returns. It fails the test
// otherwise. The stream lives until ctx ends or the test ends it.
func OpenStream(tb testing.TB, ctx context.Context, client testgrpc.TestServiceClient) testgrpc.TestService_FullDuplexCallClient {
	tb.Helper()
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	if err := st.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 1}}}); err != nil {
		tb.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		tb.Fatal(err)
	}
	return st
}
