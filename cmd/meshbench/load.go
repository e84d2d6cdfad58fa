package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// callGrace bounds how long calls still in flight when a phase's time is up
// may take, so a stuck target ends the phase instead of hanging it.
const callGrace = 10 * time.Second

// maxLatencySamples bounds the open-loop latency slice (8 MiB).
const maxLatencySamples = 1 << 20

// client is a set of HTTP/2 connections to one target. Several connections
// let a multi-process proxy (nginx's workers) use all its processes.
type client struct {
	conns []*grpc.ClientConn
	webs  []*http.Transport // meshd-grpcweb's HTTP/1.1 connections (grpcweb.go)
	stubs []testpb.TestServiceClient
}

func dialClient(addr string, n int) (*client, error) {
	c := &client{}
	for range n {
		cc, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("meshbench: dial %s: %w", addr, err)
		}
		cc.Connect()
		c.conns = append(c.conns, cc)
		c.stubs = append(c.stubs, testpb.NewTestServiceClient(cc))
	}
	return c, nil
}

// Close closes every connection.
func (c *client) Close() {
	for _, cc := range c.conns {
		cc.Close()
	}
	for _, tr := range c.webs {
		tr.CloseIdleConnections()
	}
}

// probe makes one unary call succeed on every connection, retrying until
// timeout: meshd answers UNAVAILABLE until its health watch has seen the
// backend SERVING.
func probe(ctx context.Context, c *client, req *testpb.SimpleRequest, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for _, s := range c.stubs {
		for {
			callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := s.UnaryCall(callCtx, req)
			callCancel()
			if err == nil && len(resp.GetPayload().GetBody()) != len(req.GetPayload().GetBody()) {
				err = fmt.Errorf("echo of %d bytes came back as %d", len(req.GetPayload().GetBody()), len(resp.GetPayload().GetBody()))
			}
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("meshbench: no successful call within %s: %w", timeout, err)
			case <-tick.C:
			}
		}
	}
	return nil
}

// op is one unit of closed-loop work: a call, returning how many items
// (calls or messages) it completed.
type op func(context.Context, testpb.TestServiceClient) (int64, error)

// unaryOp is one echo call.
func unaryOp(req *testpb.SimpleRequest) op {
	return func(ctx context.Context, s testpb.TestServiceClient) (int64, error) {
		if _, err := s.UnaryCall(ctx, req); err != nil {
			return 0, err
		}
		return 1, nil
	}
}

// streamOp is one server-streaming call of want messages, counted as they
// arrive.
func streamOp(req *testpb.StreamingOutputCallRequest, want int) op {
	return func(ctx context.Context, s testpb.TestServiceClient) (int64, error) {
		st, err := s.StreamingOutputCall(ctx, req)
		if err != nil {
			return 0, err
		}
		var n int64
		for {
			_, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return n, err
			}
			n++
		}
		if n != int64(want) {
			return n, fmt.Errorf("stream ended after %d of %d messages", n, want)
		}
		return n, nil
	}
}

// loadResult is one closed-loop phase.
type loadResult struct {
	ops      int64 // calls made
	items    int64 // calls or messages completed
	errs     int64
	elapsed  time.Duration // until the last call returned
	firstErr error
}

// ok is the number of calls that succeeded.
func (r loadResult) ok() int64 { return r.ops - r.errs }

// rate is items per second.
func (r loadResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.items) / r.elapsed.Seconds()
}

// closedLoop runs conc workers, each calling o back to back on its
// connection, until dur has passed or maxOps calls were started.
func closedLoop(ctx context.Context, stubs []testpb.TestServiceClient, conc int, dur time.Duration, maxOps int64, o op) loadResult {
	runCtx, cancel := context.WithTimeout(ctx, dur+callGrace)
	defer cancel()
	var issued, ops, items, errs atomic.Int64
	var errOnce sync.Once
	var first error
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for w := range conc {
		s := stubs[w%len(stubs)]
		wg.Go(func() {
			for time.Now().Before(end) && issued.Add(1) <= maxOps {
				ops.Add(1)
				n, err := o(runCtx, s)
				items.Add(n)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					errOnce.Do(func() { first = err })
				}
			}
		})
	}
	wg.Wait()
	return loadResult{ops: ops.Load(), items: items.Load(), errs: errs.Load(), elapsed: time.Since(start), firstErr: first}
}

// latencyResult is one open-loop phase.
type latencyResult struct {
	sent, errs, dropped int64
	achieved            float64 // calls sent per second
	p50, p99, p999      time.Duration
	firstErr            error
}

// openLoop sends unary calls at a fixed rate for dur, whether or not earlier
// calls have returned (at most maxInflight outstanding; beyond that a send is
// dropped and counted), and reports latency percentiles. Latency is measured
// from each call's actual start, as ghz does.
func openLoop(ctx context.Context, stubs []testpb.TestServiceClient, rate int, dur time.Duration, maxInflight int, req *testpb.SimpleRequest) latencyResult {
	n := min(int(float64(rate)*dur.Seconds()), maxLatencySamples)
	lat := make([]int64, n) // ns; 0: not sent, -1: failed
	runCtx, cancel := context.WithTimeout(ctx, dur+callGrace)
	defer cancel()
	interval := time.Second / time.Duration(rate)
	sem := make(chan struct{}, maxInflight)
	var errOnce sync.Once
	var first error
	var errs atomic.Int64
	var res latencyResult
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wg sync.WaitGroup
	start := time.Now()
loop:
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			timer.Reset(d)
			select {
			case <-runCtx.Done():
				break loop
			case <-timer.C:
			}
		}
		select {
		case sem <- struct{}{}:
		default:
			res.dropped++
			continue
		}
		res.sent++
		s := stubs[i%len(stubs)]
		wg.Go(func() {
			defer func() { <-sem }()
			t0 := time.Now()
			_, err := s.UnaryCall(runCtx, req)
			if err != nil {
				lat[i] = -1
				errs.Add(1)
				errOnce.Do(func() { first = err })
				return
			}
			lat[i] = max(int64(time.Since(t0)), 1)
		})
	}
	span := time.Since(start)
	wg.Wait()
	ok := lat[:0:0]
	for _, v := range lat {
		if v > 0 {
			ok = append(ok, v)
		}
	}
	slices.Sort(ok)
	res.errs, res.firstErr = errs.Load(), first
	if span > 0 {
		res.achieved = float64(res.sent) / span.Seconds()
	}
	res.p50, res.p99, res.p999 = percentile(ok, 0.50), percentile(ok, 0.99), percentile(ok, 0.999)
	return res
}

// percentile is the nearest-rank q-quantile of sorted nanoseconds.
func percentile(sorted []int64, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return time.Duration(sorted[min(max(i, 0), len(sorted)-1)])
}

// idleResult is one idle-streams phase.
type idleResult struct {
	opened   int
	baseMiB  float64 // the proxy's RSS before opening
	peakMiB  float64 // the largest RSS while every stream was open
	openTime time.Duration
	firstErr error
}

// perStreamKiB is the memory each idle stream cost.
func (r idleResult) perStreamKiB() float64 {
	if r.opened == 0 {
		return math.NaN()
	}
	return (r.peakMiB - r.baseMiB) * 1024 / float64(r.opened)
}

// idleStreamsPerConn keeps every connection under meshd's and nginx's limit
// of 1000 concurrent streams per connection.
const idleStreamsPerConn = 500

// idleStreams opens n server streams through addr that the backend holds
// open (its first message waits longer than the phase lasts; x-header-first
// makes it send headers at once, so a stream counts as open only once its
// headers came back through the proxy), samples rss for hold, runs atPeak
// (a heap profile) if given, then cancels every stream.
func idleStreams(ctx context.Context, addr string, n int, openTimeout, hold time.Duration, rss func() (float64, error), atPeak func()) (idleResult, error) {
	var res idleResult
	nconns := (n + idleStreamsPerConn - 1) / idleStreamsPerConn
	cl, err := dialClient(addr, nconns)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	if res.baseMiB, err = rss(); err != nil {
		return res, err
	}
	holdCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The watchdog cancels every stream if opening takes too long, which
	// also releases openers blocked in Header on a proxy that holds headers.
	watchdog := time.AfterFunc(openTimeout, cancel)
	holdUs := int32(min((openTimeout + hold + time.Minute).Microseconds(), math.MaxInt32))
	req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1, IntervalUs: holdUs}}}
	mdCtx := metadata.AppendToOutgoingContext(holdCtx, "x-header-first", "1")
	var next, opened atomic.Int64
	var errOnce sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range min(n, 64) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || holdCtx.Err() != nil {
					return
				}
				st, err := cl.stubs[i%int64(nconns)].StreamingOutputCall(mdCtx, req)
				if err == nil {
					_, err = st.Header()
				}
				if err != nil {
					errOnce.Do(func() { res.firstErr = err })
					continue
				}
				opened.Add(1)
			}
		})
	}
	wg.Wait()
	res.openTime = time.Since(start)
	res.opened = int(opened.Load())
	if !watchdog.Stop() {
		return res, fmt.Errorf("meshbench: opened %d of %d idle streams within %s", res.opened, n, openTimeout)
	}
	if res.opened < n {
		return res, fmt.Errorf("meshbench: opened %d of %d idle streams: %w", res.opened, n, res.firstErr)
	}
	res.peakMiB = res.baseMiB
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(hold)
	for {
		if v, err := rss(); err == nil {
			res.peakMiB = max(res.peakMiB, v)
		}
		if time.Now().After(end) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
		}
	}
	if atPeak != nil {
		atPeak()
	}
	return res, nil
}
