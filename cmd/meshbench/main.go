package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit/proc"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// plan is what one run measures and for how long. Every phase is bounded by
// its duration and, where it counts calls, by a maximum count.
type plan struct {
	Mode               string        `json:"mode"`
	Rounds             int           `json:"rounds"`
	Concurrency        int           `json:"concurrency"`
	Conns              int           `json:"conns"`
	Payload            int           `json:"payload_bytes"`
	Warmup             time.Duration `json:"warmup_ns"`
	ThroughputDur      time.Duration `json:"throughput_ns"`
	ThroughputMaxCalls int64         `json:"throughput_max_calls"`
	Rate               int           `json:"rate"`
	LatencyDur         time.Duration `json:"latency_ns"`
	MaxInflight        int           `json:"latency_max_inflight"`
	StreamDur          time.Duration `json:"stream_ns"`
	StreamMaxCalls     int64         `json:"stream_max_calls"`
	StreamMsgs         int           `json:"stream_msgs"`
	IdleStreams        int           `json:"idle_streams"`
	// IdleRounds is 1 in every mode: a process does not give back at once
	// the memory 10,000 streams took (Go's scavenger, nginx's pools), so a
	// second round on the same process measures something else.
	IdleRounds      int           `json:"idle_rounds"`
	IdleOpenTimeout time.Duration `json:"idle_open_timeout_ns"`
	IdleHold        time.Duration `json:"idle_hold_ns"`
	NginxWorkers    int           `json:"nginx_workers"`
	// ChurnDur, ChurnMaxConns and ChurnConc bound the chains' connection
	// churn phase: one new connection per call to the hop's server side
	// (see measureChurn). ChurnMaxConns 0 skips it.
	ChurnDur      time.Duration `json:"churn_ns"`
	ChurnMaxConns int64         `json:"churn_max_conns"`
	ChurnConc     int           `json:"churn_concurrency"`
	// Rates are the -rates phase's fixed rates, calls/s: at each, an open
	// loop of RateDur with the proxy's CPU over that window (CPU per call
	// where sidecars spend their lives) and its p99. RatesMax ("max" in
	// -rates) adds the throughput phase's CPU per call to that summary.
	// None by default, which keeps quick mode's budget.
	Rates    []int         `json:"rates,omitempty"`
	RatesMax bool          `json:"rates_max,omitempty"`
	RateDur  time.Duration `json:"rate_window_ns"`
	// Syscalls counts the proxies' system calls and context switches per
	// call in each -rates phase with `perf stat` (syscalls.go).
	Syscalls bool `json:"syscalls,omitempty"`
}

// planFor is a mode's plan. The load shape (concurrency 50, 1 KiB echo,
// 2,000 calls/s, 100 × 1 KiB streams, 10,000 idle streams) is the issue's;
// the modes differ in rounds and phase lengths.
func planFor(mode string) (plan, error) {
	p := plan{
		Mode: mode, Concurrency: 50, Conns: 4, Payload: 1024, Rate: 2000, MaxInflight: 1000,
		StreamMsgs: 100, IdleStreams: 10000, NginxWorkers: 2,
		ThroughputMaxCalls: 5_000_000, StreamMaxCalls: 500_000,
		ChurnConc: 4, ChurnMaxConns: 100_000,
	}
	switch mode {
	case "smoke": // ~10 s: a few hundred calls per target, no judgement
		p.Rounds, p.ThroughputDur, p.ThroughputMaxCalls = 1, 2*time.Second, 300
		p.Rate, p.LatencyDur = 200, time.Second
		p.StreamDur, p.StreamMaxCalls = 2*time.Second, 10
		p.IdleStreams, p.IdleRounds, p.IdleOpenTimeout, p.IdleHold = 100, 1, 10*time.Second, 200*time.Millisecond
		p.ChurnDur, p.ChurnMaxConns = time.Second, 20
		p.RateDur = 500 * time.Millisecond
	case "quick": // under 2 minutes
		p.Rounds, p.Warmup, p.ThroughputDur = 3, 300*time.Millisecond, 2*time.Second
		p.LatencyDur, p.StreamDur = 2*time.Second, 1500*time.Millisecond
		p.IdleRounds, p.IdleOpenTimeout, p.IdleHold = 1, 30*time.Second, time.Second
		p.ChurnDur = 1500 * time.Millisecond
		p.RateDur = 3 * time.Second
	case "full": // under 10 minutes
		p.Rounds, p.Warmup, p.ThroughputDur = 5, time.Second, 5*time.Second
		p.LatencyDur, p.StreamDur = 5*time.Second, 3*time.Second
		p.IdleRounds, p.IdleOpenTimeout, p.IdleHold = 1, 60*time.Second, 2*time.Second
		p.ChurnDur = 3 * time.Second
		p.RateDur = 6 * time.Second // the window
	default:
		return p, fmt.Errorf("meshbench: unknown -mode %q (want smoke, quick or full)", mode)
	}
	return p, nil
}

// target is one thing the load is sent to.
type target struct {
	name    string
	addr    string
	admin   string // meshd's admin address, for pprof
	version string
	// procs are the proxy processes: none for direct (there is no proxy to
	// charge), one for meshd and nginx, two for a chain (api, then web).
	procs       []*child
	withWorkers bool // count the processes' children too (nginx)
	hop         *hop // chains only: the hop between the two sidecars
	unavailable string
	// idleSkip, if set, is why the idle-streams phase skips this target.
	idleSkip string
	// unaryOnly, if set, is why only the unary throughput phase (calls/s,
	// CPU per call, peak RSS) measures this target: meshd-grpcweb.
	unaryOnly string
	cl        *client
	// stopTap ends meshd-tap's tapper (tap.go); nil for other targets.
	stopTap func()
}

// pids are the processes whose CPU and memory are the target's overhead:
// every proxy process of the target (both sidecars of a chain), and
// nginx's workers.
func (t *target) pids() []int {
	var p []int
	for _, c := range t.procs {
		p = append(p, c.pid())
		if t.withWorkers {
			p = append(p, proc.Children(c.pid())...)
		}
	}
	return p
}

// memMiB is the memory t's processes hold: the sum of their RSS, except
// for nginx, whose forked workers share pages with their master, where it
// is the sum of PSS (proc.MemMiB). Two sidecars are two RSSs, as they are
// two pods' in a mesh, so a chain compares with one meshd's RSS.
func (t *target) memMiB() (float64, error) {
	if t.withWorkers {
		return proc.MemMiB(t.pids()...)
	}
	return proc.RSSMiB(t.pids()...)
}

// isProxy reports whether t has proxy processes (everything but direct).
func (t *target) isProxy() bool { return len(t.procs) > 0 }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "quick", "smoke (~10 s, CI), quick (< 2 min) or full (< 10 min)")
	meshdBin := fs.String("meshd", "bin/meshd", "the meshd binary (make build)")
	nginxBin := fs.String("nginx", "/usr/sbin/nginx", "the nginx binary; the nginx target is skipped if it does not exist")
	baseBin := fs.String("baseline", "", "the meshd-base target's binary: another meshd build (e.g. the commit before a change), run like meshd")
	grpcProxyBin := fs.String("grpc-proxy", "", "the grpc-proxy target's binary (go build "+grpcProxyPkg+"); empty: the harness builds it into its temp dir")
	install := fs.Bool("install-nginx", false, "run `apt-get install -y nginx-light` if the nginx binary is missing")
	targetList := fs.String("targets", "direct,meshd,nginx", "comma-separated: "+strings.Join(targetNames, ", "))
	jsonOut := fs.String("json", "", "also write every value as JSON to this file")
	pprofPrefix := fs.String("meshd-pprof", "", "fetch CPU and heap profiles from meshd's admin /debug/pprof/ (if it serves them) into PREFIX-TARGET-{cpu,heap}.pprof")
	pprofDur := fs.Duration("pprof-seconds", 0, "with -meshd-pprof: the length of each CPU profile (default: the mode's throughput phase)")
	rounds := fs.Int("rounds", 0, "override the mode's number of rounds")
	dur := fs.Duration("duration", 0, "override the mode's throughput and latency phase length")
	rate := fs.Int("rate", 0, "override the fixed rate of the latency phase, calls/s")
	rates := fs.String("rates", "", "comma-separated fixed rates (calls/s) and/or max, e.g. 500,2000,max: the proxy's CPU per call and p99 at each rate (an open-loop phase of -rate-window per rate per round; max is the throughput phase's)")
	rateWin := fs.Duration("rate-window", 0, "override the mode's -rates window (smoke 0.5 s, quick 3 s, full 6 s)")
	conc := fs.Int("c", 0, "override the concurrency (calls or streams in flight)")
	conns := fs.Int("conns", 0, "override the number of client HTTP/2 connections per target")
	idle := fs.Int("idle", -1, "override the number of idle streams (0 skips the phase)")
	syscalls := fs.Bool("syscalls", false, "in each -rates phase, count the proxy's system calls and context switches per call with `perf stat` (needs perf and root)")
	serve := fs.Bool("serve-backend", false, "internal: serve the test backend (the harness starts itself this way)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *serve {
		return serveBackend(stdin, stdout)
	}
	p, err := planFor(*mode)
	if err != nil {
		return err
	}
	for _, o := range []struct {
		v   int
		dst *int
	}{{*rounds, &p.Rounds}, {*rate, &p.Rate}, {*conc, &p.Concurrency}, {*conns, &p.Conns}} {
		if o.v > 0 {
			*o.dst = o.v
		}
	}
	if *dur > 0 {
		p.ThroughputDur, p.LatencyDur = *dur, *dur
	}
	if p.Rates, p.RatesMax, err = parseRates(*rates); err != nil {
		return err
	}
	if *rateWin > 0 {
		p.RateDur = *rateWin
	}
	if p.Syscalls = *syscalls; p.Syscalls {
		if len(p.Rates) == 0 {
			return errors.New("meshbench: -syscalls counts in the -rates phases: give -rates too")
		}
		if err := checkPerf(context.Background()); err != nil {
			return err
		}
	}
	if *idle >= 0 {
		p.IdleStreams = *idle
	}
	names := []string{direct} // ratios need direct
	for n := range strings.SplitSeq(*targetList, ",") {
		if n = strings.TrimSpace(n); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if (slices.Contains(names, meshdBase) || slices.Contains(names, meshdMTLSBase)) != (*baseBin != "") {
		return errors.New("meshbench: the meshd-base and meshd-mtls-base targets and -baseline go together")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Without this, a closed stdout (`| head`) kills the harness with SIGPIPE
	// before it stops its children; with it, writes just fail. (nginx's
	// workers do not inherit the parent-death signal, so only an orderly
	// exit stops them.)
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	h := &harness{
		p: p, res: newResults(), errs: map[string]int64{}, firstErr: map[string]error{}, log: stderr,
		unary:  &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, p.Payload)}},
		stream: &testpb.StreamingOutputCallRequest{},
	}
	for range p.StreamMsgs {
		h.stream.ResponseParameters = append(h.stream.ResponseParameters, &testpb.ResponseParameters{Size: int32(p.Payload)})
	}
	h.baseBin = *baseBin
	h.pprof = *pprofPrefix != ""
	h.pprofDur = *pprofDur
	err = h.run(ctx, names, *meshdBin, *nginxBin, *grpcProxyBin, *install, *pprofPrefix, *jsonOut, stdout)
	if ctx.Err() != nil {
		return fmt.Errorf("meshbench: interrupted; every process it started has been stopped")
	}
	return err
}

// harness runs one benchmark. It is used from one goroutine.
type harness struct {
	p        plan
	res      *results
	errs     map[string]int64
	firstErr map[string]error
	unary    *testpb.SimpleRequest
	stream   *testpb.StreamingOutputCallRequest
	log      io.Writer // progress, so stdout holds only the report
	baseBin  string    // the meshd-base target's binary
	// pprof: -meshd-pprof was given, so the meshd targets serve
	// /debug/pprof/ on their admin port.
	pprof bool
	// pprofDur is the length of each CPU profile (-pprof-seconds).
	pprofDur time.Duration
}

func (h *harness) failed(t string, n int64, err error) {
	h.errs[t] += n
	if err != nil && h.firstErr[t] == nil {
		h.firstErr[t] = err
	}
}

func (h *harness) progress(format string, a ...any) { fmt.Fprintf(h.log, format+"\n", a...) }

// run starts the backend and every target, measures them, prints the report
// (and writes it as JSON if asked) and checks that the run is valid. Every
// process it starts is stopped by a defer here before it returns, also on
// error or interruption.
func (h *harness) run(ctx context.Context, names []string, meshdBin, nginxBin, grpcProxyBin string, install bool, pprofPrefix, jsonOut string, stdout io.Writer) error {
	started := time.Now()
	loadStart := proc.LoadAvg()
	dir, err := os.MkdirTemp("", "meshbench")
	if err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	defer os.RemoveAll(dir)
	if (slices.Contains(names, nginx) || slices.Contains(names, nginxMTLS)) && install {
		if err := h.ensureNginx(ctx, nginxBin); err != nil {
			return err
		}
	}

	backendProc, backendStdin, backendAddr, err := startBackendProcess(ctx)
	if err != nil {
		return err
	}
	defer func() {
		backendStdin.Close()
		backendProc.stop(syscall.SIGTERM, 5*time.Second)
	}()
	h.progress("backend (pid %d) at %s", backendProc.pid(), backendAddr)

	var all []*target
	defer func() { stopTargets(all) }() // all as it is on return
	for _, n := range names {
		t := &target{name: n}
		all = append(all, t)
		if err := h.startTarget(ctx, t, dir, backendAddr, meshdBin, nginxBin, grpcProxyBin); err != nil {
			return err
		}
	}
	avail := available(all)
	if err := h.measure(ctx, avail, pprofPrefix); err != nil {
		return err
	}

	rep := h.conclude(all, avail, started, loadStart)
	h.printReport(stdout, rep)
	if jsonOut != "" {
		if err := h.writeJSONReport(jsonOut, rep); err != nil {
			return err
		}
	}
	return h.verify(avail)
}

// ensureNginx installs nginx-light if nginxBin does not exist (-install-nginx).
func (h *harness) ensureNginx(ctx context.Context, nginxBin string) error {
	if _, err := os.Stat(nginxBin); err == nil {
		return nil
	}
	h.progress("installing nginx-light (apt-get install -y nginx-light)")
	return installNginx(ctx)
}

// startTarget starts t's proxy (none for direct) in front of the backend at
// backendAddr, dials it and waits until a call gets through, so that no
// phase measures a target still starting. A proxy that cannot run here
// (errUnavailable) marks t unavailable and is not an error: the report says
// why and the other targets are still measured.
func (h *harness) startTarget(ctx context.Context, t *target, dir, backendAddr, meshdBin, nginxBin, grpcProxyBin string) error {
	var err error
	switch {
	case t.name == direct:
		t.addr, t.version = backendAddr, "grpc-go "+backendVersion()
	case t.name == meshd || t.name == meshdTap:
		var c *child
		c, t.addr, t.admin, err = startMeshd(ctx, meshdBin, dir, t.name, backendAddr, "", h.pprof)
		if c != nil {
			t.procs = []*child{c}
		}
		t.version = meshdVersion(meshdBin)
		if err == nil && t.name == meshdTap {
			t.stopTap = startTapper(ctx, t.admin)
			t.version += ", tapped"
		}
	case t.name == meshdBase:
		var c *child
		c, t.addr, t.admin, err = startMeshd(ctx, h.baseBin, dir, t.name, backendAddr, "", h.pprof)
		if c != nil {
			t.procs = []*child{c}
		}
		t.version = meshdVersion(h.baseBin) + " (-baseline)"
	case t.name == meshdGRPCWeb:
		var c *child
		c, t.addr, t.admin, err = startMeshd(ctx, meshdBin, dir, t.name, backendAddr, grpcWebListener, h.pprof)
		if c != nil {
			t.procs = []*child{c}
		}
		t.version = meshdVersion(meshdBin) + ", called with gRPC-Web (application/grpc-web+proto, HTTP/1.1 keep-alive)"
		t.idleSkip, t.unaryOnly = grpcWebOnlyUnary, grpcWebOnlyUnary
	case isChain(t.name):
		bin := meshdBin
		if t.name == meshdMTLSBase {
			bin = h.baseBin
		}
		err = startChain(ctx, t, bin, dir, backendAddr)
		t.version = meshdVersion(bin) + " ×2 (" + chainShape(t.name) + ")"
	case t.name == grpcProxy:
		var c *child
		c, t.addr, t.version, err = startGRPCProxy(ctx, grpcProxyBin, dir, backendAddr)
		if c != nil {
			t.procs = []*child{c}
		}
		t.idleSkip = grpcProxyIdleSkip
	case t.name == nginxMTLS:
		var v string
		v, err = startNginxChain(ctx, t, nginxBin, dir, backendAddr, h.p.NginxWorkers)
		t.version = fmt.Sprintf("%s ×2, %d workers each (%s)", v, h.p.NginxWorkers, nginxChainShape)
		t.idleSkip = nginxChainIdleSkip
	case t.name == nginx:
		var c *child
		c, t.addr, t.version, err = startNginx(ctx, nginxBin, dir, backendAddr, h.p.NginxWorkers)
		if c != nil {
			t.procs = []*child{c}
		}
		t.withWorkers = true
	default:
		return fmt.Errorf("meshbench: unknown target %q (want %s)", t.name, strings.Join(targetNames, ", "))
	}
	if errors.Is(err, errUnavailable) {
		t.unavailable = err.Error()
		h.progress("%s: UNAVAILABLE: %s", t.name, t.unavailable)
		return nil
	}
	if err != nil {
		return err
	}
	if t.name == meshdGRPCWeb {
		t.cl = dialGRPCWebClient(t.addr, h.p.Conns)
	} else if t.cl, err = dialClient(t.addr, h.p.Conns); err != nil {
		return err
	}
	if err := probe(ctx, t.cl, h.unary, 20*time.Second); err != nil {
		return fmt.Errorf("meshbench: %s at %s does not answer: %w%s", t.name, t.addr, err, procLog(t))
	}
	pid := "-"
	if t.isProxy() {
		pid = fmt.Sprint(t.pids())
	}
	h.progress("%s: %s at %s, pids %s", t.name, t.version, t.addr, pid)
	return nil
}

// stopTargets closes the clients and stops the processes of targets, last
// started first. nginx is stopped through stopNginx because its workers do
// not die with their master.
func stopTargets(targets []*target) {
	for _, t := range slices.Backward(targets) {
		if t.stopTap != nil {
			t.stopTap()
		}
		if t.cl != nil {
			t.cl.Close()
		}
		for _, c := range slices.Backward(t.procs) {
			if t.withWorkers {
				stopNginx(c)
			} else {
				c.stop(syscall.SIGTERM, 5*time.Second)
			}
		}
	}
}

// available is the targets that are not unavailable, in order.
func available(all []*target) []*target {
	var avail []*target
	for _, t := range all {
		if t.unavailable == "" {
			avail = append(avail, t)
		}
	}
	return avail
}

// measure runs every phase: the rounds against every available target, the
// idle-stream rounds against the proxies, and the CPU profiles if asked.
// Each round takes the targets in a rotated order, so slow drift on the
// machine spreads over all targets instead of biasing one (see doc.go).
func (h *harness) measure(ctx context.Context, avail []*target, pprofPrefix string) error {
	for r := range h.p.Rounds {
		for i := range avail {
			t := avail[(i+r)%len(avail)] // rotate the order each round
			if err := h.measureRound(ctx, t, r); err != nil {
				return err
			}
		}
	}
	var proxies []*target
	for _, t := range avail {
		if t.isProxy() && t.idleSkip == "" {
			proxies = append(proxies, t)
		}
		if t.idleSkip != "" && h.p.IdleStreams > 0 {
			h.progress("idle %-12s skipped: %s", t.name, t.idleSkip)
		}
	}
	if h.p.IdleStreams > 0 {
		for r := range h.p.IdleRounds {
			for i := range proxies {
				t := proxies[(i+r)%len(proxies)]
				if err := h.measureIdle(ctx, t, r, pprofPrefix); err != nil {
					return err
				}
			}
		}
	}
	if pprofPrefix != "" {
		for _, t := range proxies {
			if t.admin != "" {
				h.cpuProfile(ctx, t, pprofPrefix)
			}
		}
	}
	return ctx.Err()
}

// runReport is what the report of a finished run is made from.
type runReport struct {
	all        []*target // also the unavailable ones: the report says why
	availNames []string  // the measured targets
	checks     []check
	started    time.Time
	loadStart  string // load average at start and end: a busy machine
	loadEnd    string // explains noisy figures
}

// conclude derives the figures that compare targets and evaluates the checks.
func (h *harness) conclude(all, avail []*target, started time.Time, loadStart string) runReport {
	rep := runReport{all: all, started: started, loadStart: loadStart}
	for _, t := range avail {
		rep.availNames = append(rep.availNames, t.name)
	}
	h.res.deriveAddedP99(rep.availNames, h.p.Rates)
	rep.checks = checks(h.res, h.p, rep.availNames, slices.Contains(rep.availNames, nginx))
	rep.loadEnd = proc.LoadAvg()
	return rep
}

// printReport writes the human report to stdout: the conditions of the run,
// each target's version or why it was not measured, and the table.
func (h *harness) printReport(stdout io.Writer, rep runReport) {
	fmt.Fprintf(stdout, "meshbench -mode %s: %d round(s), interleaved; %d CPUs, load average %s at start, %s at end\n",
		h.p.Mode, h.p.Rounds, runtime.NumCPU(), rep.loadStart, rep.loadEnd)
	fmt.Fprintf(stdout, "client, backend and proxy share this machine: compare ratios from one run, not absolute figures.\n")
	for _, t := range rep.all {
		state := t.version
		if t.unavailable != "" {
			state = "UNAVAILABLE: " + t.unavailable
		} else if n := h.errs[t.name]; n > 0 {
			state += fmt.Sprintf("; %d FAILED calls, first: %v", n, h.firstErr[t.name])
		}
		if t.unavailable == "" && t.unaryOnly != "" {
			state += "; only unary throughput and CPU per call: " + t.unaryOnly
		} else if t.unavailable == "" && t.idleSkip != "" && h.p.IdleStreams > 0 {
			state += "; no idle-streams figure: " + t.idleSkip
		}
		fmt.Fprintf(stdout, "  %-12s %s\n", t.name, state)
	}
	printTable(stdout, h.res, h.p, rep.availNames, rep.checks)
	fmt.Fprintf(stdout, "\ntook %.0fs\n", time.Since(rep.started).Seconds())
}

// writeJSONReport writes every value of the run as JSON to path (-json).
func (h *harness) writeJSONReport(path string, rep runReport) error {
	jr := jsonReport{
		Mode: h.p.Mode, Plan: h.p, Started: rep.started.UTC().Format(time.RFC3339), Seconds: time.Since(rep.started).Seconds(),
		CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadAvgStart: rep.loadStart, LoadAvgEnd: rep.loadEnd, Checks: rep.checks,
	}
	jr.Metrics, jr.VsDirect, jr.VsNginx = buildJSON(h.res, h.p, rep.availNames)
	jr.Pairs = pairJSON(h.res, rep.availNames)
	for _, t := range rep.all {
		jt := jsonTarget{Name: t.name, Available: t.unavailable == "", Reason: t.unavailable, Version: t.version, Errors: h.errs[t.name]}
		if e := h.firstErr[t.name]; e != nil {
			jt.FirstErr = e.Error()
		}
		jr.Targets = append(jr.Targets, jt)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	err = writeJSON(f, jr)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("meshbench: %w", cerr)
	}
	return err
}

// verify fails the run if any call failed or a target measured nothing: the
// figures would not mean what they say. It never looks at a timing, so the
// smoke mode can run in CI.
func (h *harness) verify(avail []*target) error {
	var bad []string
	for _, t := range avail {
		if n := h.errs[t.name]; n > 0 {
			bad = append(bad, fmt.Sprintf("%s: %d failed calls or streams (first: %v)", t.name, n, h.firstErr[t.name]))
		}
		keys := []string{"unary_calls_per_s", "p50_ms", "stream_msgs_per_s"}
		if t.unaryOnly != "" {
			keys = keys[:1]
		}
		if t.isProxy() && h.p.IdleStreams > 0 && t.idleSkip == "" {
			keys = append(keys, "idle_rss_mib")
		}
		if t.hop != nil && h.p.ChurnMaxConns > 0 {
			keys = append(keys, "hop_conns_per_s")
		}
		for _, rate := range h.p.Rates {
			if t.unaryOnly == "" {
				keys = append(keys, rateKey("p99_ms", rate))
			}
		}
		for _, k := range keys {
			if s := summarize(h.res.get(t.name, k)); s.n == 0 || s.max <= 0 {
				bad = append(bad, fmt.Sprintf("%s: measured no %s", t.name, k))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("meshbench: the run is not valid:\n  %s", strings.Join(bad, "\n  "))
	}
	return nil
}

// measureRound runs one round's phases against t: throughput (with the
// proxy's CPU and peak RSS), latency at the fixed rate, streaming.
func (h *harness) measureRound(ctx context.Context, t *target, r int) error {
	p, stubs := h.p, t.cl.stubs
	uop := unaryOp(h.unary)
	if p.Warmup > 0 {
		w := closedLoop(ctx, stubs, p.Concurrency, p.Warmup, p.ThroughputMaxCalls, uop)
		h.failed(t.name, w.errs, w.firstErr)
	}
	pids := t.pids()
	var cpu0 float64
	var hwm bool
	var sampler *rssSampler
	if len(pids) > 0 {
		d, err := proc.CPU(pids...)
		if err != nil {
			return fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
		}
		cpu0 = d.Seconds()
		// VmHWM is per process: reset each meshd's, sum them afterwards
		// (an upper bound on the chain's peak, since the two peaks need not
		// coincide). nginx's workers are sampled instead.
		hwm = !t.withWorkers
		for _, pid := range pids {
			hwm = hwm && proc.ResetPeakRSS(pid) == nil
		}
		sampler = startRSSSampler(ctx, t.memMiB, 100*time.Millisecond)
	}
	tr := closedLoop(ctx, stubs, p.Concurrency, p.ThroughputDur, p.ThroughputMaxCalls, uop)
	line := fmt.Sprintf("round %d/%d %-12s %8.0f calls/s", r+1, p.Rounds, t.name, float64(tr.ok())/tr.elapsed.Seconds())
	h.res.set(t.name, "unary_calls_per_s", r, float64(tr.ok())/tr.elapsed.Seconds())
	h.failed(t.name, tr.errs, tr.firstErr)
	if len(pids) > 0 {
		peak := sampler.stop()
		d, err := proc.CPU(pids...)
		if err != nil {
			return fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
		}
		cpu1 := d.Seconds()
		if hwm {
			if mib, err := sumKiB(pids, "VmHWM"); err == nil {
				peak = max(peak, mib)
			}
		}
		if tr.ok() > 0 {
			h.res.set(t.name, "cpu_s_per_10k", r, (cpu1-cpu0)/float64(tr.ok())*1e4)
		}
		h.res.set(t.name, "peak_rss_mib", r, peak)
		line += fmt.Sprintf(", %.3f CPU-s/10k, peak %.1f MiB", (cpu1-cpu0)/float64(max(tr.ok(), 1))*1e4, peak)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if t.unaryOnly != "" {
		h.progress("%s; other phases skipped: %s", line, t.unaryOnly)
		return nil
	}

	lr := openLoop(ctx, stubs, p.Rate, p.LatencyDur, p.MaxInflight, h.unary)
	h.failed(t.name, lr.errs, lr.firstErr)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	h.res.set(t.name, "p50_ms", r, ms(lr.p50))
	h.res.set(t.name, "p99_ms", r, ms(lr.p99))
	h.res.set(t.name, "p999_ms", r, ms(lr.p999))
	h.res.set(t.name, "achieved_rate", r, lr.achieved)
	h.res.set(t.name, "latency_dropped", r, float64(lr.dropped))
	line += fmt.Sprintf(", p50/p99/p999 %.2f/%.2f/%.2f ms at %.0f/s", ms(lr.p50), ms(lr.p99), ms(lr.p999), lr.achieved)
	if lr.dropped > 0 || lr.achieved < 0.95*float64(p.Rate) {
		line += fmt.Sprintf(" (RATE NOT HELD: %d sends dropped at %d in flight)", lr.dropped, p.MaxInflight)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	for _, rate := range p.Rates {
		s, err := h.measureRate(ctx, t, r, rate)
		if err != nil {
			return err
		}
		line += ", " + s
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	sr := closedLoop(ctx, stubs, p.Concurrency, p.StreamDur, p.StreamMaxCalls, streamOp(h.stream, p.StreamMsgs))
	h.failed(t.name, sr.errs, sr.firstErr)
	h.res.set(t.name, "stream_msgs_per_s", r, sr.rate())
	line += fmt.Sprintf(", %.0f stream msgs/s", sr.rate())
	if t.hop != nil && p.ChurnMaxConns > 0 && ctx.Err() == nil {
		s, err := h.measureChurn(ctx, t, r)
		if err != nil {
			return err
		}
		line += ", " + s
	}
	h.progress("%s", line)
	return ctx.Err()
}

// parseRates parses -rates: fixed rates in calls/s and "max".
func parseRates(s string) (rates []int, withMax bool, err error) {
	for f := range strings.SplitSeq(s, ",") {
		switch f = strings.TrimSpace(f); f {
		case "":
		case "max":
			withMax = true
		default:
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 || n > 1_000_000 {
				return nil, false, fmt.Errorf("meshbench: -rates: %q is neither a rate in calls/s (1 to 1000000) nor max", f)
			}
			if !slices.Contains(rates, n) {
				rates = append(rates, n)
			}
		}
	}
	return rates, withMax, nil
}

// measureRate is one -rates phase against t: an open loop at rate calls/s
// for p.RateDur (bounded by rate × RateDur calls), with the CPU the
// proxy's processes used over it (utime+stime, clock ticks) divided by the
// calls that succeeded, and the p99.
func (h *harness) measureRate(ctx context.Context, t *target, r, rate int) (string, error) {
	p, pids := h.p, t.pids()
	var cpu0 time.Duration
	if len(pids) > 0 {
		var err error
		if cpu0, err = proc.CPU(pids...); err != nil {
			return "", fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
		}
	}
	var ps *perfStat
	if p.Syscalls && len(pids) > 0 {
		var err error
		if ps, err = startPerfStat(pids); err != nil {
			return "", err
		}
	}
	lr := openLoop(ctx, t.cl.stubs, rate, p.RateDur, p.MaxInflight, h.unary)
	h.failed(t.name, lr.errs, lr.firstErr)
	if ps != nil {
		sums, err := ps.stop()
		if err != nil {
			return "", err
		}
		if ok := lr.sent - lr.errs; ok > 0 {
			for i, c := range sysCounters {
				h.res.set(t.name, rateKey(c.key, rate), r, sums[i]/float64(ok))
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	h.res.set(t.name, rateKey("p99_ms", rate), r, ms(lr.p99))
	h.res.set(t.name, rateKey("achieved_rate", rate), r, lr.achieved)
	line := fmt.Sprintf("@%d/s p99 %.2f ms", rate, ms(lr.p99))
	if len(pids) > 0 {
		cpu1, err := proc.CPU(pids...)
		if err != nil {
			return "", fmt.Errorf("meshbench: %s: %w%s", t.name, err, procLog(t))
		}
		if ok := lr.sent - lr.errs; ok > 0 {
			v := (cpu1 - cpu0).Seconds() / float64(ok) * 1e4
			h.res.set(t.name, rateKey("cpu_s_per_10k", rate), r, v)
			line += fmt.Sprintf(" %.3f CPU-s/10k", v)
		}
	}
	if lr.dropped > 0 || lr.achieved < 0.95*float64(rate) {
		line += fmt.Sprintf(" (RATE NOT HELD: %.0f/s, %d dropped)", lr.achieved, lr.dropped)
	}
	return line, nil
}

// sumKiB is the sum of a /proc/PID/status field over pids, in MiB.
func sumKiB(pids []int, key string) (float64, error) {
	var kib int64
	for _, pid := range pids {
		n, err := proc.StatusKiB(pid, key)
		if err != nil {
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

// measureIdle holds p.IdleStreams streams open through the proxy t and
// records its RSS. A failure is recorded against the target, not fatal.
func (h *harness) measureIdle(ctx context.Context, t *target, r int, pprofPrefix string) error {
	var atPeak func()
	if pprofPrefix != "" && t.admin != "" {
		atPeak = func() {
			file := fmt.Sprintf("%s-%s-idle-heap.pprof", pprofPrefix, t.name)
			if err := fetchPprof(ctx, t.admin, "heap", file, 30*time.Second); err != nil {
				h.progress("%s: no heap profile: %v", t.name, err)
			}
		}
	}
	res, err := idleStreams(ctx, t.addr, h.p.IdleStreams, h.p.IdleOpenTimeout, h.p.IdleHold,
		t.memMiB, atPeak)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		h.failed(t.name, 1, err)
		h.progress("idle %d/%d %-12s FAILED: %v%s", r+1, h.p.IdleRounds, t.name, err, procLog(t))
		return nil
	}
	h.res.set(t.name, "idle_rss_mib", r, res.peakMiB)
	h.res.set(t.name, "idle_kib_per_stream", r, res.perStreamKiB())
	h.res.set(t.name, "idle_open_s", r, res.openTime.Seconds())
	h.progress("idle %d/%d %-12s %d streams opened in %.1fs: memory %.1f MiB (from %.1f), %.2f KiB/stream",
		r+1, h.p.IdleRounds, t.name, res.opened, res.openTime.Seconds(), res.peakMiB, res.baseMiB, res.perStreamKiB())
	return nil
}

// cpuProfile takes CPU profiles of meshd in extra phases that are not part
// of the figures (profiling costs CPU): one under the throughput load
// (PREFIX-TARGET-cpu.pprof) and one at each -rates fixed rate
// (PREFIX-TARGET-cpu-RATE.pprof), where a sidecar spends most of its time.
func (h *harness) cpuProfile(ctx context.Context, t *target, prefix string) {
	if err := fetchPprof(ctx, t.admin, "", "", 5*time.Second); err != nil {
		h.progress("%s: no CPU profile: %v", t.name, err)
		return
	}
	dur := h.pprofDur
	if dur <= 0 {
		dur = h.p.ThroughputDur
	}
	secs := max(int(math.Ceil(dur.Seconds())), 1)
	load := time.Duration(secs)*time.Second + 500*time.Millisecond
	h.profileUnder(ctx, t, fmt.Sprintf("%s-%s-cpu.pprof", prefix, t.name), secs, "under load", func() {
		closedLoop(ctx, t.cl.stubs, h.p.Concurrency, load, h.p.ThroughputMaxCalls, unaryOp(h.unary))
	})
	for _, rate := range h.p.Rates {
		if ctx.Err() != nil {
			return
		}
		h.profileUnder(ctx, t, fmt.Sprintf("%s-%s-cpu-%d.pprof", prefix, t.name, rate), secs, fmt.Sprintf("at %d calls/s", rate), func() {
			openLoop(ctx, t.cl.stubs, rate, load, h.p.MaxInflight, h.unary)
		})
	}
}

// profileUnder fetches a secs-long CPU profile of t into file while load runs.
func (h *harness) profileUnder(ctx context.Context, t *target, file string, secs int, what string, load func()) {
	done := make(chan error, 1)
	go func() {
		done <- fetchPprof(ctx, t.admin, fmt.Sprintf("profile?seconds=%d", secs), file, time.Duration(secs)*time.Second+30*time.Second)
	}()
	load()
	if err := <-done; err != nil {
		h.progress("%s: no CPU profile %s: %v", t.name, what, err)
		return
	}
	h.progress("%s: CPU profile %s in %s", t.name, what, file)
}

// errNoPprof: the admin server does not serve /debug/pprof/.
var errNoPprof = errors.New("meshd's admin does not serve /debug/pprof/ (skipped)")

// fetchPprof GETs /debug/pprof/PATH from meshd's admin into file ("" only
// checks that the endpoint exists).
func fetchPprof(ctx context.Context, admin, path, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/debug/pprof/"+path, nil)
	if err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("meshbench: pprof: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return errNoPprof
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("meshbench: pprof %s: %s", path, resp.Status)
	}
	if file == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("meshbench: pprof %s: %w", path, err)
	}
	return nil
}

// procLog is a failing target's recent output, for error messages.
func procLog(t *target) string {
	var b strings.Builder
	for _, c := range t.procs {
		if l := strings.TrimSpace(c.log()); l != "" {
			fmt.Fprintf(&b, "\n%s output:\n%s", c.name, l)
		}
	}
	return b.String()
}

// meshdVersion is `meshd version`'s first line.
func meshdVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "meshd (version unknown)"
	}
	v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if !strings.HasPrefix(v, "meshd") {
		v = "meshd " + v
	}
	return v
}

// backendVersion is the grpc-go module version the backend was built with.
func backendVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "google.golang.org/grpc" {
				return d.Version
			}
		}
	}
	return ""
}
