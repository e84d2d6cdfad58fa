package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// TestMidMessageReset: when meshd's route timeout ends a call whose
// response message is half forwarded (the client's flow-control window
// holds the rest back), meshd resets the client stream instead of sending
// a status that would cut the message short, and /metrics counts it, with
// the deadline, under meshd_frame_*.
func TestMidMessageReset(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "mid", 1)
	m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes: [{name: all, match: {prefix: /}, cluster: backends, timeout: 2s}]
clusters: [{name: backends, endpoints: %s}]
`, addrs(bs)))
	// The route timeout must fire after the response has started: it
	// counts from the call's start, dial included, and a loaded machine
	// has taken more than 300ms before the backend's first DATA (the call
	// then ends with a plain status, no reset). The stalled message holds
	// the call open until the timeout, however long it is.
	// A fixed 64 KiB window (which also turns off grpc-go's window growth):
	// a 2 MiB message cannot all cross while the client reads nothing.
	cc := dial(t, m.Addr, grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535))
	waitServing(t, cc)
	before := scrapeMetrics(t, m.Admin).Samples()
	const resets = `meshd_frame_mid_message_resets_total{listener="main"}`
	const deadlines = `meshd_frame_deadlines_exceeded_total{listener="main"}`
	if _, ok := before[resets]; !ok {
		t.Fatalf("/metrics has no %s", resets)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := testpb.NewTestServiceClient(cc).StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 2 << 20}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Read nothing until meshd has given up on the call.
	testkit.WaitFor(t, 10*time.Second, "meshd to reset the call mid-message", func() bool {
		return scrapeMetrics(t, m.Admin).Samples()[resets] >= before[resets]+1
	})
	if _, err := st.Recv(); status.Code(err) != codes.Canceled && status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("client saw %v, want the stream reset (CANCELLED)", err)
	}
	after := scrapeMetrics(t, m.Admin).Samples()
	if after[deadlines] < before[deadlines]+1 {
		t.Errorf("%s went %g → %g, want it to count the route timeout", deadlines, before[deadlines], after[deadlines])
	}
}
