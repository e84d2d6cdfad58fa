package test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testkit"
)

// chaosFate is what the test does to one call of TestChaos.
type chaosFate int

const (
	chaosPlain     chaosFate = iota // left alone: must succeed
	chaosCancelled                  // cancelled by the test at a random moment
	chaosBroken                     // sent to the cluster whose backend fails every call
)

func (f chaosFate) String() string { return [...]string{"plain", "cancelled", "broken"}[f] }

// TestChaos runs many overlapping calls of every shape (unary, server,
// client and bidi streams, up to 64 KiB, with small flow-control windows)
// over one client connection through meshd. The test cancels about a third
// of them at a random moment, sends about a sixth to a cluster whose only
// backend fails every call, and leaves the rest alone. Then:
//
//   - every call left alone succeeds: all of them, since nothing but the
//     other calls on the connection disturbs them;
//   - every call to the failing backend carries its status (DATA_LOSS and
//     its message), not one meshd made up;
//   - a cancelled call either finished before the cancel (OK) or ends
//     CANCELLED; any other code came from meshd before the cancel, and
//     fails the test;
//   - meshd closed no client connection as abusive (the cancellations are
//     no rapid reset), holds no stream afterwards, and the connection
//     still serves.
func TestChaos(t *testing.T) {
	t.Parallel()
	good := startBackends(t, "chaos", 2)
	broken := startBackends(t, "chaos-broken", 1)
	broken[0].FailAll(codes.DataLoss)
	o := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - {name: broken, match: {prefix: /, headers: [{name: x-target, exact: broken}]}, cluster: broken}
  - {name: all, match: {prefix: /}, cluster: good}
clusters:
  - {name: good, endpoints: %s}
  - name: broken
    endpoints: %s
    outlier: {consecutive_failures: -1}
`, addrs(good), addrs(broken)))
	cc := dial(t, o.Addr, grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(256<<10))
	waitServing(t, cc)
	waitHealthy(t, o.Admin, "good", 2)
	waitHealthy(t, o.Admin, "broken", 1)
	client := testpb.NewTestServiceClient(cc)
	before := scrapeMetrics(t, o.Admin).Samples()

	const (
		calls       = 300
		concurrency = 40
		callTimeout = 20 * time.Second // for the calls the test does not cancel
	)
	rng := rand.New(rand.NewPCG(1, 2))
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, concurrency)
		started  [3]atomic.Int64 // by fate
		ok       [3]atomic.Int64
		errMu    sync.Mutex
		bad      []string // calls that ended as their fate forbids
		maxNoted = 20
	)
	note := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(bad) < maxNoted {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	for i := range calls {
		var fate chaosFate
		switch n := rng.IntN(6); {
		case n < 3:
			fate = chaosPlain
		case n < 5:
			fate = chaosCancelled
		default:
			fate = chaosBroken
		}
		kind := rng.IntN(4)
		size := rng.IntN(64 << 10)
		delay := time.Duration(rng.IntN(20)) * time.Millisecond        // at the backend, before it answers
		cancelAfter := time.Duration(rng.IntN(100)) * time.Millisecond // for cancelled calls
		sem <- struct{}{}
		wg.Add(1)
		started[fate].Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			md := []string{"x-delay", delay.String()}
			if fate == chaosBroken {
				md = append(md, "x-target", "broken")
			}
			ctx = metadata.AppendToOutgoingContext(ctx, md...)
			if fate == chaosCancelled {
				timer := time.AfterFunc(cancelAfter, cancel)
				defer timer.Stop()
			}
			err := chaosCall(ctx, client, kind, size)
			st := status.Convert(err)
			switch {
			case err == nil && fate != chaosBroken:
				ok[fate].Add(1)
			case fate == chaosPlain:
				note("call %d (plain, shape %d, %d bytes): %v", i, kind, size, err)
			case fate == chaosCancelled && st.Code() != codes.Canceled:
				note("call %d (cancelled after %v, shape %d, %d bytes): %v, want OK or CANCELLED", i, cancelAfter, kind, size, err)
			case fate == chaosBroken && (st.Code() != codes.DataLoss || !strings.Contains(st.Message(), "fails every call")):
				note("call %d (to the failing backend, shape %d): %v, want its DATA_LOSS", i, kind, err)
			case fate == chaosBroken:
				ok[fate].Add(1) // answered with the backend's status, as it must be
			}
		}()
	}
	wg.Wait()
	for f := chaosPlain; f <= chaosBroken; f++ {
		t.Logf("%s calls: %d started, %d as expected (%s)", f, started[f].Load(), ok[f].Load(),
			map[chaosFate]string{chaosPlain: "succeeded", chaosCancelled: "succeeded before the cancel", chaosBroken: "carried the backend's DATA_LOSS"}[f])
	}
	if len(bad) > 0 {
		t.Errorf("calls that ended as they must not (first %d):\n%s", len(bad), strings.Join(bad, "\n"))
	}
	if n, want := ok[chaosPlain].Load(), started[chaosPlain].Load(); n != want {
		t.Errorf("%d of %d calls left alone succeeded, want all", n, want)
	}
	if n, want := ok[chaosBroken].Load(), started[chaosBroken].Load(); n != want {
		t.Errorf("%d of %d calls to the failing backend carried its status, want all", n, want)
	}

	testkit.WaitFor(t, 10*time.Second, "meshd to hold no stream", func() bool {
		return scrapeMetrics(t, o.Admin).Value(t, "meshd_active_streams", nil) == 0
	})
	after := scrapeMetrics(t, o.Admin).Samples()
	for series, v := range after {
		if strings.HasPrefix(series, "meshd_listener_connections_closed_total{") && v != before[series] {
			t.Errorf("%s went %g → %g: meshd closed a client connection as abusive", series, before[series], v)
		}
	}
	if err := emptyCall(cc, 5*time.Second); err != nil {
		t.Fatalf("call after the chaos: %v", err)
	}
}

// chaosCall makes one call of shape kind (0 unary, 1 server stream, 2
// bidi, 3 client stream) moving about size bytes each way, and returns its
// status (nil for OK).
func chaosCall(ctx context.Context, client testpb.TestServiceClient, kind, size int) error {
	body := func(n int) *testpb.Payload { return &testpb.Payload{Body: make([]byte, n)} }
	switch kind {
	case 0:
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: body(size)})
		return err
	case 1:
		st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
			{Size: int32(size / 2)}, {Size: int32(size / 4), IntervalUs: 1000}, {Size: int32(size / 4)},
		}})
		for err == nil {
			_, err = st.Recv()
		}
		if err == io.EOF {
			return nil
		}
		return err
	case 2:
		st, err := client.FullDuplexCall(ctx)
		for j := 0; err == nil && j < 5; j++ {
			if err = st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(size / 5)}}, Payload: body(size / 5)}); err == nil {
				_, err = st.Recv()
			}
		}
		if err == nil {
			err = st.CloseSend()
		}
		if err == nil {
			_, err = st.Recv()
		} else if err == io.EOF {
			_, err = st.Recv() // the stream ended: Recv has the status
		}
		if err == io.EOF {
			return nil
		}
		return err
	default:
		st, err := client.StreamingInputCall(ctx)
		for j := 0; err == nil && j < 5; j++ {
			err = st.Send(&testpb.StreamingInputCallRequest{Payload: body(size / 5)})
		}
		if err == nil || err == io.EOF {
			_, err = st.CloseAndRecv() // after io.EOF from Send, this has the status
		}
		return err
	}
}
