package test

// Recovery and zero-downtime upgrades (issue 15), with real meshd binaries:
//
//   - TestRecoveryKillRestart: meshd started before its two backends, 8
//     callers, one backend SIGKILLed mid-run and restarted 4s later.
//   - TestRecoveryAfterOutage: time from a backend listening again to its
//     first served call, after a 5s outage (and after 60s with
//     MESHD_TEST_LONG_OUTAGE=1, off by default to keep the suite short).
//   - TestRecoveryBlackHole: an endpoint that accepts TCP and never speaks
//     HTTP/2 costs no CPU and never takes a call, even in panic mode.
//   - TestUpgradeUnderLoad: a second meshd with the same config takes over
//     from the first (SO_REUSEPORT) without a failed call.
//   - TestPanicThreshold: one of three endpoints serving, threshold 50%:
//     calls spread over all three; threshold 0: only the serving one.
//
// Backends that must die by SIGKILL run in child processes: the test
// binary itself, re-executed into TestHelperBackendProcess.

import (
	"github.com/meshd/meshd/internal/testkit/proc"

	"github.com/meshd/meshd/internal/testkit"

	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/test/backend"
)

// helperBackendEnv makes the test binary a backend process: "name@addr".
const helperBackendEnv = "MESHD_TEST_HELPER_BACKEND"

// TestHelperBackendProcess is not a test: it is the backend child process
// of the recovery tests (the os/exec helper-process pattern). It serves a
// test backend on the address in MESHD_TEST_HELPER_BACKEND, prints
// "listening ADDR UNIXNANO" (a time just before it bound the port), and
// serves until its stdin closes or it is killed.
func TestHelperBackendProcess(t *testing.T) {
	spec := os.Getenv(helperBackendEnv)
	if spec == "" {
		t.Skip("backend child process of the recovery tests; runs only when re-executed by them")
	}
	name, addr, _ := strings.Cut(spec, "@")
	before := time.Now()
	b, err := backend.Start(name, backend.WithAddr(addr))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Printf("listening %s %d\n", b.Addr, before.UnixNano())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it or exits
	b.Stop()
}

// procBackend is a backend in a child process.
type procBackend struct {
	name, addr string
	cmd        *exec.Cmd
	stdin      io.Closer
	// listening is a moment just before the child bound its port: a lower
	// bound of when meshd could first reach it.
	listening time.Time
	exited    chan struct{}
}

// startProcBackend starts a backend child process on addr and returns once
// it listens. It is stopped at the end of the test.
func startProcBackend(t *testing.T, name, addr string) *procBackend {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b := &procBackend{name: name, addr: addr, exited: make(chan struct{})}
	b.cmd = exec.Command(self, "-test.run=^TestHelperBackendProcess$")
	b.cmd.Env = append(os.Environ(), helperBackendEnv+"="+name+"@"+addr)
	stdin, err := b.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	b.stdin = stdin
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			if !sent {
				first <- sc.Text()
				sent = true
			}
		}
		if !sent {
			close(first)
		}
		_ = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-b.exited:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
	})
	select {
	case line := <-first:
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "listening" {
			t.Fatalf("backend %s did not start: %q", name, line)
		}
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatalf("backend %s: %q: %v", name, line, err)
		}
		b.listening = time.Unix(0, ns)
	case <-time.After(30 * time.Second):
		t.Fatalf("backend %s did not start within 30s", name)
	}
	return b
}

// kill sends SIGKILL and waits for the process to be gone. The process
// died between sent and gone.
func (b *procBackend) kill(t *testing.T) (sent, gone time.Time) {
	t.Helper()
	sent = time.Now()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	return sent, time.Now()
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// pause waits for d: the length of a phase of the scenario (load running,
// a backend down), not a wait for some state.
func pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}

// callRec is one call (or one whole stream) made by a recoveryLoad.
type callRec struct {
	start, end time.Time
	backend    string // who answered ("" if nobody did)
	err        error
	stream     bool
}

// recoveryLoad runs callers, each on its own connection to meshd, and
// records every call with its start, end and backend. A caller stops
// between calls, so stopping never fails a call in flight.
type recoveryLoad struct {
	mu    sync.Mutex
	calls []callRec
	stop  chan struct{}
	wg    sync.WaitGroup
}

// Stream shape of the stream callers: streamPings ping-pongs, paced.
const (
	streamPings = 25
	streamPace  = 40 * time.Millisecond
)

// startRecoveryLoad starts unary callers (each call held delay at the
// backend) and stream callers (each stream about a second long). It is
// stopped by finish, or at the end of the test.
func startRecoveryLoad(t *testing.T, addr string, unary, streams int, delay time.Duration) *recoveryLoad {
	t.Helper()
	l := &recoveryLoad{stop: make(chan struct{})}
	for range unary {
		client := testpb.NewTestServiceClient(dial(t, addr))
		l.wg.Go(func() { l.unaryCaller(client, delay) })
	}
	for range streams {
		client := testpb.NewTestServiceClient(dial(t, addr))
		l.wg.Go(func() { l.streamCaller(client) })
	}
	t.Cleanup(func() { l.finish() })
	return l
}

func (l *recoveryLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *recoveryLoad) record(c callRec) {
	l.mu.Lock()
	l.calls = append(l.calls, c)
	l.mu.Unlock()
}

func (l *recoveryLoad) unaryCaller(client testpb.TestServiceClient, delay time.Duration) {
	md := metadata.Pairs("x-delay", delay.String())
	for !l.stopped() {
		ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 5*time.Second)
		var hdr metadata.MD
		c := callRec{start: time.Now()}
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr))
		c.end, c.err = time.Now(), err
		c.backend = resp.GetServerId()
		if c.backend == "" {
			c.backend = backendOf(hdr, nil)
		}
		cancel()
		l.record(c)
		if err != nil {
			pause(5 * time.Millisecond) // pacing: a failing cluster must not turn the caller into a busy loop
		}
	}
}

func (l *recoveryLoad) streamCaller(client testpb.TestServiceClient) {
	for !l.stopped() {
		c := callRec{start: time.Now(), stream: true}
		c.backend, c.err = oneStream(client)
		c.end = time.Now()
		l.record(c)
		if c.err != nil {
			pause(5 * time.Millisecond)
		}
	}
}

// oneStream runs one bidi stream of streamPings ping-pongs, then half-closes
// and expects a clean end.
func oneStream(client testpb.TestServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := client.FullDuplexCall(ctx)
	if err != nil {
		return "", err
	}
	ping := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 16}}}
	for i := range streamPings {
		if i > 0 {
			pause(streamPace) // pacing: the stream stays open about a second
		}
		if err := st.Send(ping); err != nil {
			_, err = st.Recv() // the stream's status says why
			return "", fmt.Errorf("send %d: %w", i, err)
		}
		if _, err := st.Recv(); err != nil {
			return "", fmt.Errorf("recv %d: %w", i, err)
		}
	}
	hdr, _ := st.Header()
	if err := st.CloseSend(); err != nil {
		return "", err
	}
	if _, err := st.Recv(); err != io.EOF {
		return "", fmt.Errorf("end of stream: %v, want OK", err)
	}
	return backendOf(hdr, nil), nil
}

// snapshot returns the calls recorded so far.
func (l *recoveryLoad) snapshot() []callRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]callRec(nil), l.calls...)
}

// finish stops the callers, waits for their last calls and returns every
// call. It is idempotent.
func (l *recoveryLoad) finish() []callRec {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	return l.snapshot()
}

// firstServed returns the end of the earliest successful call answered by
// backend, or false.
func firstServed(calls []callRec, backend string) (time.Time, bool) {
	var first time.Time
	for _, c := range calls {
		if c.err == nil && c.backend == backend && (first.IsZero() || c.end.Before(first)) {
			first = c.end
		}
	}
	return first, !first.IsZero()
}

// waitFirstCall waits until backend has answered a call and returns how
// long after since (its listening time) that call ended.
func waitFirstCall(t *testing.T, l *recoveryLoad, backend string, since time.Time) time.Duration {
	t.Helper()
	var at time.Time
	testkit.WaitFor(t, 15*time.Second, "a call served by "+backend, func() bool {
		var ok bool
		at, ok = firstServed(l.snapshot(), backend)
		return ok
	})
	return at.Sub(since)
}

// failuresSince returns the failed calls that started at or after since.
func failuresSince(calls []callRec, since time.Time) []callRec {
	var out []callRec
	for _, c := range calls {
		if c.err != nil && !c.start.Before(since) {
			out = append(out, c)
		}
	}
	return out
}

// describeCalls lists up to 10 calls, with times relative to since.
func describeCalls(cs []callRec, since time.Time) string {
	var b strings.Builder
	for i, c := range cs {
		if i == 10 {
			fmt.Fprintf(&b, "  ... and %d more\n", len(cs)-10)
			break
		}
		fmt.Fprintf(&b, "  +%v..+%v stream=%v backend=%q: %v\n", c.start.Sub(since).Round(time.Millisecond),
			c.end.Sub(since).Round(time.Millisecond), c.stream, c.backend, c.err)
	}
	return b.String()
}

// maxGap is the longest time in [from, to] without a successful call of
// backend ending, and when it began.
func maxGap(calls []callRec, backend string, from, to time.Time) (time.Duration, time.Time) {
	var ends []time.Time
	for _, c := range calls {
		if c.err == nil && c.backend == backend && !c.end.Before(from) && !c.end.After(to) {
			ends = append(ends, c.end)
		}
	}
	slices.SortFunc(ends, time.Time.Compare)
	gap, at, last := time.Duration(0), from, from
	for _, e := range append(ends, to) {
		if d := e.Sub(last); d > gap {
			gap, at = d, last
		}
		last = e
	}
	return gap, at
}

// recoveryConfig routes everything to one cluster of eps through a meshd
// listening on listen with its admin on admin (127.0.0.1:0 for any port).
func recoveryConfig(listen, admin string, eps []string, clusterKeys string) string {
	return fmt.Sprintf(`
admin: {address: %s}
listeners: [{name: main, address: %s}]
drain_timeout: 10s
routes: [{name: all, match: {prefix: /}, cluster: backends}]
clusters:
  - name: backends
    endpoints: [%s]
%s`, admin, listen, strings.Join(eps, ", "), clusterKeys)
}

// TestRecoveryKillRestart is the run of issue 15: meshd starts before its
// two backends; 8 callers; the first backend is killed with SIGKILL and
// restarted 4s later. Only calls in flight at the kill may fail, the other
// backend serves throughout, and each backend gets calls within a second
// of listening, at start and after the restart.
func TestRecoveryKillRestart(t *testing.T) {
	t.Parallel()
	const callers = 8
	bin := buildMeshd(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	p := startBinary(t, bin, writeConfig(t, recoveryConfig("127.0.0.1:0", "127.0.0.1:0", []string{addrA, addrB}, "")))

	// No backend yet: meshd is ready (listeners up, config loaded), and a
	// call fails fast with UNAVAILABLE.
	if c := readyCode(p.admin); c != http.StatusOK {
		t.Fatalf("/ready = %d with the backends not up yet, want 200", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := testpb.NewTestServiceClient(dial(t, p.addr)).EmptyCall(ctx, &testpb.Empty{})
	cancel()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call with no backend up: %v, want UNAVAILABLE", err)
	}

	load := startRecoveryLoad(t, p.addr, callers, 0, 10*time.Millisecond)
	start := time.Now()
	a := startProcBackend(t, "a", addrA)
	b := startProcBackend(t, "b", addrB)
	upA := waitFirstCall(t, load, "a", a.listening)
	upB := waitFirstCall(t, load, "b", b.listening)
	bothUp := time.Now()
	t.Logf("started before its backends: first call on a %v and on b %v after each listened",
		upA.Round(time.Millisecond), upB.Round(time.Millisecond))

	pause(2 * time.Second) // the cluster under load before the kill
	killAt, killedBy := a.kill(t)
	pause(4 * time.Second) // a is down
	a2 := startProcBackend(t, "a-restarted", addrA)
	upA2 := waitFirstCall(t, load, "a-restarted", a2.listening)
	pause(time.Second) // both serve again
	calls := load.finish()
	end := time.Now()

	// In flight at the kill: running at some moment between the signal
	// and the process being gone.
	inFlight := 0
	for _, c := range calls {
		if !c.start.After(killedBy) && c.end.After(killAt) {
			inFlight++
		}
	}
	failed := failuresSince(calls, bothUp)
	gapB, gapAt := maxGap(calls, "b", bothUp, end)
	t.Logf("%d calls; SIGKILL at +%v with %d calls in flight: %d failed; b's longest gap %v at +%v; restarted a got its first call %v after listening",
		len(calls), killAt.Sub(start).Round(time.Millisecond), inFlight, len(failed), gapB.Round(time.Millisecond),
		gapAt.Sub(start).Round(time.Millisecond), upA2.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Logf("failed calls:\n%s", describeCalls(failed, start))
	}
	if len(failed) > inFlight || len(failed) > callers {
		t.Errorf("%d calls failed, more than the %d in flight at the kill (concurrency %d):\n%s",
			len(failed), inFlight, callers, describeCalls(failed, start))
	}
	for _, c := range failed {
		if c.start.After(killAt.Add(time.Second)) {
			t.Errorf("a call started %v after the kill failed:\n%s", c.start.Sub(killAt).Round(time.Millisecond), describeCalls([]callRec{c}, start))
		}
	}
	if gapB > time.Second {
		t.Errorf("b served no call for %v: it must serve throughout", gapB)
	}
	// Bounds with headroom for a shared machine; the design point is
	// health.reconnect_max (1s) and the measured values are logged above.
	for name, d := range map[string]time.Duration{"a at start": upA, "b at start": upB, "a after restart": upA2} {
		if d > 2*time.Second {
			t.Errorf("%s: first call %v after listening, want within about a second", name, d)
		}
	}
}

// TestRecoveryAfterOutage measures the time from a backend listening
// again to its first served call after an outage: 5s by default, and 60s
// too with MESHD_TEST_LONG_OUTAGE=1 (off by default: it alone would double
// the suite's time). However long the outage, the reconnect backoff is
// capped at health.reconnect_max (1s).
func TestRecoveryAfterOutage(t *testing.T) {
	t.Parallel()
	outages := []time.Duration{5 * time.Second}
	if os.Getenv("MESHD_TEST_LONG_OUTAGE") != "" {
		outages = append(outages, 60*time.Second)
	}
	bin := buildMeshd(t)
	for _, outage := range outages {
		t.Run(outage.String(), func(t *testing.T) {
			t.Parallel()
			steady := startBackends(t, "steady", 1)[0]
			addr := freeAddr(t)
			p := startBinary(t, bin, writeConfig(t, recoveryConfig("127.0.0.1:0", "127.0.0.1:0", []string{steady.Addr, addr}, "")))
			load := startRecoveryLoad(t, p.addr, 2, 0, 10*time.Millisecond)
			b := startProcBackend(t, "flaky", addr)
			waitFirstCall(t, load, "flaky", b.listening)
			b.kill(t)
			pause(outage) // the outage
			b2 := startProcBackend(t, "flaky-back", addr)
			took := waitFirstCall(t, load, "flaky-back", b2.listening)
			calls := load.finish()
			t.Logf("after a %v outage: first call %v after the backend listened again (%d calls, %d failed)",
				outage, took.Round(time.Millisecond), len(calls), len(failuresSince(calls, time.Time{})))
			if took > 2*time.Second {
				t.Errorf("first call %v after listening, after a %v outage: want within about a second", took, outage)
			}
		})
	}
}

// TestRecoveryBlackHole gives meshd an endpoint that accepts TCP and never
// speaks HTTP/2, next to a healthy one, with panic mode at 100% (so the
// cluster is in panic as soon as the black hole has its verdict). meshd
// stays near idle (one connection per connect timeout, no hot loop), and
// the black hole is never admitted: every call goes to the healthy
// backend.
func TestRecoveryBlackHole(t *testing.T) {
	t.Parallel()
	bin := buildMeshd(t)
	good := startBackends(t, "good", 1)[0]
	hole := testkit.BlackHole(t)
	p := startBinary(t, bin, writeConfig(t, recoveryConfig("127.0.0.1:0", "127.0.0.1:0",
		[]string{good.Addr, hole.Addr()}, "    healthy_panic_threshold: 100\n")))
	cc := dial(t, p.addr)
	waitServing(t, cc)
	e := waitState(t, p.admin, "backends", hole.Addr(), "ejected")
	t.Logf("black hole: %s (%s)", e.State, e.Reason)

	const window = 5 * time.Second
	holeConns := hole.Accepted
	procCPU := func(pid int) time.Duration {
		d, err := proc.CPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	cpu0, conns0, t0 := procCPU(p.cmd.Process.Pid), holeConns(), time.Now()
	for time.Since(t0) < window {
		pause(500 * time.Millisecond) // observation interval
		if e, ok := endpointAt(t, p.admin, "backends", hole.Addr()); !ok || e.State == "serving" {
			t.Fatalf("black hole endpoint %+v (listed %v): it must never serve", e, ok)
		}
	}
	cpu, conns, took := procCPU(p.cmd.Process.Pid)-cpu0, holeConns()-conns0, time.Since(t0)
	t.Logf("meshd used %v of CPU in %v with a black-hole endpoint (%.1f%% of a core); %d new connections to the black hole",
		cpu, took.Round(time.Millisecond), 100*cpu.Seconds()/took.Seconds(), conns)
	if cpu > took/20 {
		t.Errorf("meshd used %v of CPU in %v next to a black hole: a hot loop", cpu, took)
	}
	// One connection per 5s connect timeout plus backoff.
	if max := int(took/(5*time.Second)) + 2; conns > max {
		t.Errorf("%d connections to the black hole in %v, want at most %d", conns, took, max)
	}

	client := testpb.NewTestServiceClient(cc)
	for i := range 100 {
		resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		if err != nil || resp.GetServerId() != good.Name {
			t.Fatalf("call %d: %q, %v; want every call served by %s", i, resp.GetServerId(), err, good.Name)
		}
	}
	if v := panicViewOf(t, p.admin, "backends"); !v.Panic || v.PanicPicks < 100 {
		t.Errorf("/clusters: panic %v, picks %d; want panic mode (1 of 2 serving, threshold 100) and the calls counted", v.Panic, v.PanicPicks)
	}
}

// panicView is the panic-mode part of a cluster's /clusters status.
type panicView struct {
	Healthy, Total        int
	HealthyPanicThreshold int
	Panic                 bool
	PanicEntered          uint64
	PanicPicks            uint64
}

func panicViewOf(t *testing.T, admin, cluster string) panicView {
	t.Helper()
	code, body := adminGet(t, admin, "/clusters")
	if code != http.StatusOK {
		t.Fatalf("/clusters: %d %s", code, body)
	}
	var out map[string]struct {
		Status panicView `json:"status"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("/clusters: %v\n%s", err, body)
	}
	return out[cluster].Status
}

// TestPanicThreshold: one of three endpoints serving and two answering
// NOT_SERVING (they still serve calls, so where calls go shows). At 50%
// the calls spread over all three, /clusters shows panic mode and
// /metrics counts it; at 0 (the default) only the serving one gets calls.
func TestPanicThreshold(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		threshold int
		spread    bool
	}{{50, true}, {0, false}} {
		t.Run(fmt.Sprintf("threshold %d", tc.threshold), func(t *testing.T) {
			t.Parallel()
			bs := startBackends(t, fmt.Sprintf("panic%d", tc.threshold), 3)
			m := startObserved(t, simpleConfig(bs, fmt.Sprintf("    healthy_panic_threshold: %d\n", tc.threshold)))
			for _, b := range bs {
				waitState(t, m.Admin, "backends", b.Addr, "serving")
			}
			bs[1].SetServing(false)
			bs[2].SetServing(false)
			waitState(t, m.Admin, "backends", bs[1].Addr, "ejected")
			waitState(t, m.Admin, "backends", bs[2].Addr, "ejected")

			client := testpb.NewTestServiceClient(dial(t, m.Addr))
			counts := map[string]int{}
			const n = 90
			for i := range n {
				resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				counts[resp.GetServerId()]++
			}
			v := panicViewOf(t, m.Admin, "backends")
			metrics := scrapeMetrics(t, m.Admin).Samples()
			picks := metrics[`meshd_cluster_panic_picks_total{cluster="backends"}`]
			t.Logf("threshold %d%%: calls %v; /clusters panic=%v entered=%d picks=%d; /metrics panic=%v picks=%v",
				tc.threshold, counts, v.Panic, v.PanicEntered, v.PanicPicks, metrics[`meshd_cluster_panic{cluster="backends"}`], picks)
			if tc.spread {
				for _, b := range bs {
					if counts[b.Name] < n/6 {
						t.Errorf("%s got %d of %d calls; in panic mode calls spread over all three", b.Name, counts[b.Name], n)
					}
				}
				if !v.Panic || v.PanicEntered != 1 || v.PanicPicks < n || v.HealthyPanicThreshold != 50 {
					t.Errorf("/clusters %+v: want panic mode entered once, at least %d picks, threshold 50", v, n)
				}
				if metrics[`meshd_cluster_panic{cluster="backends"}`] != 1 || picks < n {
					t.Errorf("/metrics: panic %v, picks %v; want 1 and at least %d", metrics[`meshd_cluster_panic{cluster="backends"}`], picks, n)
				}
			} else {
				if counts[bs[0].Name] != n {
					t.Errorf("calls %v: with panic mode off all %d go to the serving %s", counts, n, bs[0].Name)
				}
				if v.Panic || v.PanicPicks != 0 || picks != 0 {
					t.Errorf("/clusters %+v, /metrics picks %v: panic mode off, nothing to count", v, picks)
				}
			}
		})
	}
}

// readyPid is /ready?pid=pid's status code over a fresh connection (so
// that the kernel picks a process anew among those sharing the port), or
// 0 when the admin port does not answer.
func readyPid(admin string, pid int) int {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://%s/ready?pid=%d", admin, pid))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestUpgradeUnderLoad replaces a running meshd binary by a second one
// with the same config while 8 callers (4 unary, 4 streaming) run for
// about 10s: start the new one, wait for its /ready (by pid: the admin
// port is shared), SIGTERM the old one. No call fails, the streams open
// at the SIGTERM finish, the old meshd exits 0 and the new one serves on.
// With -reuse-port=false a second meshd cannot start next to the first.
func TestUpgradeUnderLoad(t *testing.T) {
	t.Parallel()
	bin := buildMeshd(t)
	bs := startBackends(t, "upgrade", 2)
	file := writeConfig(t, recoveryConfig(freeAddr(t), freeAddr(t), []string{bs[0].Addr, bs[1].Addr}, ""))
	old := startBinary(t, bin, file)
	waitServing(t, dial(t, old.addr))

	load := startRecoveryLoad(t, old.addr, 4, 4, 5*time.Millisecond)
	start := time.Now()
	pause(2 * time.Second) // the old meshd under load

	nw := startBinary(t, bin, file)
	if nw.addr != old.addr || nw.admin != old.admin {
		t.Fatalf("new meshd on %s (admin %s), old on %s (admin %s): want the same addresses", nw.addr, nw.admin, old.addr, old.admin)
	}
	testkit.WaitFor(t, 15*time.Second, "the new meshd's /ready?pid", func() bool { return readyPid(nw.admin, nw.cmd.Process.Pid) == http.StatusOK })

	t.Run("exclusive bind fails next to a running meshd", func(t *testing.T) {
		cmd := exec.Command(bin, "run", "-config", file, "-reuse-port=false")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(string(out), "address already in use") {
			t.Fatalf("meshd run -reuse-port=false next to a running meshd: %v\n%s", err, out)
		}
	})

	sigterm := time.Now()
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("old meshd still running %v after SIGTERM\n%s", time.Since(sigterm), old.Log())
	}
	exited := time.Now()
	if old.err != nil {
		t.Errorf("old meshd exited with %v, want 0\n%s", old.err, old.Log())
	}
	if rest := 10*time.Second - time.Since(start); rest > 0 {
		pause(rest) // about 10s of load in all
	}
	calls := load.finish()

	var failed []callRec
	servedAfter, openStreams := 0, 0
	for _, c := range calls {
		switch {
		case c.err != nil:
			failed = append(failed, c)
		case c.start.After(exited):
			servedAfter++
		}
		if c.stream && c.start.Before(sigterm) && c.end.After(sigterm) {
			openStreams++
		}
	}
	t.Logf("upgrade under load: %d calls in %v, %d failed; %d streams open at SIGTERM; old meshd exited %v after SIGTERM; %d calls served by the new one after that",
		len(calls), time.Since(start).Round(time.Millisecond), len(failed), openStreams, exited.Sub(sigterm).Round(time.Millisecond), servedAfter)
	if len(failed) > 0 {
		t.Errorf("%d calls failed during the upgrade:\n%s", len(failed), describeCalls(failed, start))
	}
	if openStreams == 0 {
		t.Error("no stream was open at SIGTERM: the test did not exercise the drain")
	}
	if servedAfter == 0 {
		t.Error("no call served after the old meshd exited")
	}

	if err := nw.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-nw.exited:
		if nw.err != nil {
			t.Errorf("new meshd exited with %v, want 0", nw.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("new meshd still running 20s after SIGTERM")
	}
}
