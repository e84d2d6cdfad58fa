package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/test/backend"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "meshdemo:", err)
		os.Exit(1)
	}
}

// run starts Consul, three backends, an OTLP receiver and meshd, sends
// traffic through meshd while the backends change, prints what happened and
// stops everything. Everything it starts is stopped by a defer here, in
// reverse order of starting, so meshd drains before its backends and Consul
// go away.
func run() error {
	opts := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	agent, err := startConsul()
	if err != nil {
		return err
	}
	defer agent.Close()
	d := &demo{agent: agent}
	act(1, "discovery, health and balancing: meshd in front of backends found in Consul")
	defer d.stopBackends()
	if err := d.startBackends(); err != nil {
		return err
	}
	if d.recv, err = startReceiver(); err != nil {
		return err
	}
	defer d.recv.Stop()

	dir, err := os.MkdirTemp("", "meshdemo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d.listen, d.admin = freeAddr(), freeAddr()
	m, err := d.startMeshd(opts.meshdBin, dir)
	if err != nil {
		return err
	}
	defer m.stop()
	if err := waitReady(ctx, d.admin, m.done); err != nil {
		return fmt.Errorf("%w\nmeshd output:\n%s", err, m.log.String())
	}
	fmt.Printf("    meshd ready: gRPC on %s, admin on http://%s (/ready /clusters /routes /config_dump)\n", d.listen, d.admin)
	fmt.Printf("    dashboard: http://%s/\n", d.admin)
	tp := startTap(opts.meshdBin, d.admin, 6)

	cc, err := grpc.NewClient(d.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	t, completed := d.sendTraffic(ctx, testpb.NewTestServiceClient(cc), opts.rate, opts.duration)
	tapOut := tp.finish()
	if !completed {
		return nil // interrupted (Ctrl-C): no summary, just stop everything
	}
	d.printSummary(t)
	step(fmt.Sprintf("meshd tap -admin %s -limit 6 (ran beside the traffic: the first calls it saw, live)", d.admin))
	fmt.Print(indent(tapOut))

	act2 := &meshAct{consul: agent}
	defer act2.stop()
	if err := act2.run(ctx, opts.meshdBin, dir); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // interrupted during act 2
	}
	if opts.keep {
		d.keepRunning(ctx, m, act2)
	}
	step("stopping the sidecars and meshd (SIGTERM: drain, exit 0), the backends and Consul")
	return nil
}

// options are the demo's command-line settings.
type options struct {
	meshdBin string
	duration time.Duration
	rate     int
	keep     bool
}

// parseFlags parses the command line. -consul is handed on through
// MESHD_CONSUL_BIN, which is where consultest.Launch looks for the binary.
func parseFlags() options {
	meshdBin := flag.String("meshd", "bin/meshd", "the meshd binary")
	consulBin := flag.String("consul", "", "the consul binary (default: scripts/install-consul.sh)")
	duration := flag.Duration("duration", 12*time.Second, "how long to send traffic")
	rate := flag.Int("rate", 10, "calls per second")
	keep := flag.Bool("keep", false, "keep everything running after the traffic until Ctrl-C")
	flag.Parse()
	if *consulBin != "" {
		os.Setenv("MESHD_CONSUL_BIN", *consulBin)
	}
	return options{meshdBin: *meshdBin, duration: *duration, rate: *rate, keep: *keep}
}

// demo is what run has started and the steps that use it. run owns it and
// uses it from its own goroutine only.
type demo struct {
	agent    *consultest.Agent
	backends []*backend.Backend // users-a..c, and users-d once it joins
	recv     *otlptest.Receiver
	listen   string // meshd's gRPC listener
	admin    string // meshd's admin server
}

// startConsul starts the Consul agent meshd discovers the backends from.
func startConsul() (*consultest.Agent, error) {
	step("starting a Consul agent (consul agent -dev on loopback)")
	agent, err := consultest.Launch()
	if err != nil {
		return nil, err
	}
	fmt.Printf("    consul HTTP API at %s\n", agent.Addr)
	return agent, nil
}

// startBackends starts users-a..c and registers them in Consul. What
// started before an error is in d.backends already, for stopBackends.
func (d *demo) startBackends() error {
	step("starting 3 gRPC backends and registering them in Consul as service \"users\"")
	for _, name := range []string{"users-a", "users-b", "users-c"} {
		b, err := startBackend(d.agent.Client, name)
		if err != nil {
			return err
		}
		d.backends = append(d.backends, b)
		fmt.Printf("    %s at %s\n", name, b.Addr)
	}
	return nil
}

// stopBackends stops every backend started, including one that joined
// during the traffic.
func (d *demo) stopBackends() {
	for _, b := range d.backends {
		b.Stop()
	}
}

// startReceiver starts the OTLP receiver meshd exports its spans to, so the
// summary can show a trace.
func startReceiver() (*otlptest.Receiver, error) {
	step("starting an OTLP/gRPC trace receiver for meshd's spans")
	recv, err := otlptest.Listen()
	if err != nil {
		return nil, err
	}
	fmt.Printf("    OTLP receiver at %s\n", recv.Addr)
	return recv, nil
}

// meshdConfig is the config the demo runs meshd with: one route to the
// Consul service "users", traced to the receiver at otlpAddr.
func meshdConfig(admin, listen, consulAddr, otlpAddr string) string {
	return fmt.Sprintf(`# written by meshdemo
admin: {address: %s}
listeners: [{name: main, address: %s}]
routes:
  - name: users
    match: {service: grpc.testing.TestService}
    cluster: users
    timeout: 2s
clusters:
  - name: users
    consul: {service: users, tag: grpc}
    lb: round_robin
consul: {address: %s}
tracing: {otlp_endpoint: %s, sample_ratio: 1.0}
drain_timeout: 5s
`, admin, listen, consulAddr, otlpAddr)
}

// meshdProc is a running meshd. done receives what Wait returned, once; its
// buffer of 1 lets a reader that is not stop put the result back.
type meshdProc struct {
	cmd  *exec.Cmd
	log  bytes.Buffer // meshd's stdout and stderr, for an error message
	done chan error
}

// startMeshd writes act 1's meshd config into dir and starts meshd with it.
func (d *demo) startMeshd(bin, dir string) (*meshdProc, error) {
	cfg := meshdConfig(d.admin, d.listen, d.agent.Addr, d.recv.Addr)
	return startMeshd("meshd", bin, filepath.Join(dir, "meshd.yaml"), cfg)
}

// startMeshd writes cfg to cfgFile and starts meshd with it, announcing it
// as what. The caller owns the process and the goroutine that waits for
// it: it must call stop, which ends both.
func startMeshd(what, bin, cfgFile, cfg string) (*meshdProc, error) {
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	step("starting " + what + ": " + bin + " run -config " + cfgFile)
	fmt.Print(indent(cfg))
	m := &meshdProc{cmd: exec.Command(bin, "run", "-config", cfgFile, "-log-level", "warn")}
	m.cmd.Stdout, m.cmd.Stderr = &m.log, &m.log
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start meshd: %w (run `make build` first)", err)
	}
	m.done = make(chan error, 1)
	go func() { m.done <- m.cmd.Wait() }()
	return m, nil
}

// stop lets meshd drain and exit (SIGTERM), killing it if it takes more
// than 10s. It returns once meshd has exited and been waited for.
func (m *meshdProc) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
}

// tally is what the traffic saw, for the summary.
type tally struct {
	counts   map[string]int // answered calls by backend (x-backend header)
	failures int
	total    int // calls planned
}

// sendTraffic makes rate calls/s for duration through meshd, one at a time,
// printing each, and makes the backend changes of d.events on the way. It
// reports false if ctx ended first.
func (d *demo) sendTraffic(ctx context.Context, client testpb.TestServiceClient, rate int, duration time.Duration) (tally, bool) {
	step(fmt.Sprintf("sending %d calls/s for %s through meshd, one client connection", rate, duration))
	t := tally{counts: map[string]int{}}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	start := time.Now()
	t.total = int(duration.Seconds() * float64(rate))
	events := d.events(t.total)
	for i := 0; i < t.total; i++ {
		select {
		case <-ctx.Done():
			return t, false
		case <-tick.C:
		}
		if ev, ok := events[i]; ok {
			ev()
		}
		who, took, err := call(ctx, client)
		if err != nil {
			t.failures++
			fmt.Printf("    call %3d  %6.2fs  FAILED %s\n", i+1, time.Since(start).Seconds(), status.Convert(err).Message())
			continue
		}
		t.counts[who]++
		fmt.Printf("    call %3d  %6.2fs  → %-8s %6.2fms\n", i+1, time.Since(start).Seconds(), who, float64(took.Microseconds())/1000)
	}
	return t, true
}

// events are the changes made while traffic flows, keyed by the call they
// precede, so that the calls show meshd ejecting an endpoint that reports
// NOT_SERVING, re-admitting it, and discovering a new one.
func (d *demo) events(total int) map[int]func() {
	return map[int]func(){
		total / 4: func() {
			note("users-b reports NOT_SERVING on grpc.health.v1: meshd ejects it at once")
			d.backends[1].SetServing(false)
		},
		total / 2: func() {
			note("users-b reports SERVING again: meshd re-admits it")
			d.backends[1].SetServing(true)
		},
		3 * total / 4: func() {
			b, err := startBackend(d.agent.Client, "users-d")
			if err != nil {
				note("could not start users-d: " + err.Error())
				return
			}
			d.backends = append(d.backends, b)
			note("users-d registered in Consul: meshd discovers it and sends it traffic")
		},
	}
}

// call makes one unary call and returns who answered (the backend's
// x-backend response header, "-" without one) and how long it took.
func call(ctx context.Context, client testpb.TestServiceClient) (who string, took time.Duration, err error) {
	var hdr metadata.MD
	callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	t0 := time.Now()
	_, err = client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}}, grpc.Header(&hdr))
	cancel()
	took = time.Since(t0)
	who = "-"
	if v := hdr.Get("x-backend"); len(v) > 0 {
		who = v[0]
	}
	return who, took, err
}

// printSummary prints how many calls each backend answered, then meshd's
// own account of the run: its cluster view, its metrics and a trace.
func (d *demo) printSummary(t tally) {
	step("summary")
	names := make([]string, 0, len(t.counts))
	for n := range t.counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("    %-8s answered %d calls\n", n, t.counts[n])
	}
	fmt.Printf("    failed calls: %d of %d\n", t.failures, t.total)
	if body, err := get("http://" + d.admin + "/clusters"); err == nil {
		fmt.Println("    meshd's view of the cluster (GET /clusters, abridged):")
		printClusters(body)
	}
	if body, err := get("http://" + d.admin + "/metrics"); err == nil {
		fmt.Println("    meshd's metrics (GET /metrics, grpc_server_handled_total):")
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "grpc_server_handled_total{") {
				fmt.Println("      " + line)
			}
		}
	}
	printTrace(d.recv)
}

// keepRunning (-keep) leaves everything up to explore until Ctrl-C, or
// until one of the meshd processes exits by itself; Wait's result then
// goes back on its done channel for its stop.
func (d *demo) keepRunning(ctx context.Context, m *meshdProc, act2 *meshAct) {
	step("running until Ctrl-C; try: curl http://" + d.admin + "/clusters, curl http://" + act2.apiAdmin + "/certs")
	fmt.Printf("    dashboard: open http://%s/ (and http://%s/ for the api sidecar)\n", d.admin, act2.apiAdmin)
	fmt.Printf("    live calls: bin/meshd tap -admin %s\n", act2.apiAdmin)
	procs := []*meshdProc{m, act2.api, act2.web}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, p := range procs {
			select {
			case err := <-p.done:
				p.done <- err
				fmt.Printf("    a meshd exited by itself (%v):\n%s", err, p.log.String())
				return
			default:
			}
		}
	}
}

// tapProc is a `meshd tap` run beside the traffic.
type tapProc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startTap runs `meshd tap -admin admin -limit n`, which exits by itself
// after n calls. The caller must call finish, which ends it and the
// goroutine that waits for it.
func startTap(bin, admin string, n int) *tapProc {
	tp := &tapProc{cmd: exec.Command(bin, "tap", "-admin", admin, "-limit", strconv.Itoa(n)), done: make(chan error, 1)}
	tp.cmd.Stdout, tp.cmd.Stderr = &tp.out, &tp.out
	if err := tp.cmd.Start(); err != nil {
		tp.done <- err
		return tp
	}
	go func() { tp.done <- tp.cmd.Wait() }()
	return tp
}

// finish waits for the tap to end (killing it after 3s: then it saw fewer
// calls than asked) and returns what it printed.
func (tp *tapProc) finish() string {
	select {
	case err := <-tp.done:
		if err != nil && tp.cmd.Process == nil {
			return fmt.Sprintf("meshd tap did not start: %v\n", err)
		}
	case <-time.After(3 * time.Second):
		_ = tp.cmd.Process.Kill()
		<-tp.done
	}
	return tp.out.String()
}

// startBackend starts a backend and registers it in Consul with a gRPC
// health check, so Consul's view and meshd's health watch agree.
func startBackend(c *api.Client, name string) (*backend.Backend, error) {
	b, err := backend.Start(name)
	if err != nil {
		return nil, err
	}
	b.SetServing(true)
	host, portS, _ := net.SplitHostPort(b.Addr)
	port, _ := strconv.Atoi(portS)
	err = c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: name, Name: "users", Address: host, Port: port, Tags: []string{"grpc"},
		Meta: map[string]string{"instance": name},
	})
	if err != nil {
		b.Stop()
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	return b, nil
}

func waitReady(ctx context.Context, admin string, done <-chan error) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return fmt.Errorf("meshd exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if body, err := get("http://" + admin + "/ready"); err == nil && body == "ready\n" {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	return errors.New("meshd not ready within 20s")
}

func get(url string) (string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

// printTrace prints how many spans meshd exported and the last call's trace:
// its SERVER span and the CLIENT span of each upstream attempt.
func printTrace(recv *otlptest.Receiver) {
	var spans []*tracepb.Span
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) { // the exporter batches; poll briefly
		if spans = recv.Spans(); len(spans) > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("    meshd exported %d spans over OTLP; the last call's trace:\n", len(spans))
	if len(spans) == 0 {
		return
	}
	last := spans[len(spans)-1].GetTraceId()
	for _, sp := range spans {
		if !bytes.Equal(sp.GetTraceId(), last) {
			continue
		}
		attrs := []string{}
		for _, a := range sp.GetAttributes() {
			switch a.GetKey() {
			case "meshd.route", "meshd.cluster", "meshd.endpoint", "meshd.attempt", "rpc.grpc.status_code":
				v := a.GetValue().GetStringValue()
				if v == "" {
					v = fmt.Sprint(a.GetValue().GetIntValue())
				}
				attrs = append(attrs, a.GetKey()+"="+v)
			}
		}
		sort.Strings(attrs)
		fmt.Printf("      trace %x span %x %-6s %s %s\n", sp.GetTraceId()[:4], sp.GetSpanId()[:4],
			strings.TrimPrefix(sp.GetKind().String(), "SPAN_KIND_"), sp.GetName(), strings.Join(attrs, " "))
	}
}

// printClusters prints one line per endpoint from the admin /clusters JSON.
func printClusters(body string) {
	var clusters map[string]struct {
		Status struct {
			Endpoints []struct {
				ID, Address, State, Source, Reason string
				Ejections                          int
			}
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(body), &clusters); err != nil {
		fmt.Print(indent(body))
		return
	}
	for name, c := range clusters {
		for _, e := range c.Status.Endpoints {
			fmt.Printf("      %-6s %-22s %-22s %-8s %s (%s)\n", name, e.ID, e.Address, e.State, e.Source, e.Reason)
		}
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

// act announces one of the demo's acts.
func act(n int, title string) {
	fmt.Printf("\n%s\n=== act %d: %s\n%s\n", strings.Repeat("=", 78), n, title, strings.Repeat("=", 78))
}
func note(s string) { fmt.Printf("    *** %s\n", s) }

func indent(s string) string {
	var b bytes.Buffer
	for _, line := range bytes.Split([]byte(s), []byte("\n")) {
		if len(line) > 0 {
			b.WriteString("      ")
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
