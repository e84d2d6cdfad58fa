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

func run() error {
	meshdBin := flag.String("meshd", "bin/meshd", "the meshd binary")
	consulBin := flag.String("consul", "", "the consul binary (default: scripts/install-consul.sh)")
	duration := flag.Duration("duration", 12*time.Second, "how long to send traffic")
	rate := flag.Int("rate", 10, "calls per second")
	keep := flag.Bool("keep", false, "keep everything running after the traffic until Ctrl-C")
	flag.Parse()
	if *consulBin != "" {
		os.Setenv("MESHD_CONSUL_BIN", *consulBin)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	step("starting a Consul agent (consul agent -dev on loopback)")
	agent, err := consultest.Launch()
	if err != nil {
		return err
	}
	defer agent.Close()
	fmt.Printf("    consul HTTP API at %s\n", agent.Addr)

	step("starting 3 gRPC backends and registering them in Consul as service \"users\"")
	var backends []*backend.Backend
	defer func() {
		for _, b := range backends {
			b.Stop()
		}
	}()
	for _, name := range []string{"users-a", "users-b", "users-c"} {
		b, err := startBackend(agent.Client, name)
		if err != nil {
			return err
		}
		backends = append(backends, b)
		fmt.Printf("    %s at %s\n", name, b.Addr)
	}

	step("starting an OTLP/gRPC trace receiver for meshd's spans")
	recv, err := otlptest.Listen()
	if err != nil {
		return err
	}
	defer recv.Stop()
	fmt.Printf("    OTLP receiver at %s\n", recv.Addr)

	dir, err := os.MkdirTemp("", "meshdemo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	listen, admin := freeAddr(), freeAddr()
	cfgFile := filepath.Join(dir, "meshd.yaml")
	cfg := fmt.Sprintf(`# written by meshdemo
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
`, admin, listen, agent.Addr, recv.Addr)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		return err
	}
	step("starting meshd: " + *meshdBin + " run -config " + cfgFile)
	fmt.Print(indent(cfg))
	var meshLog bytes.Buffer
	meshd := exec.Command(*meshdBin, "run", "-config", cfgFile, "-log-level", "warn")
	meshd.Stdout, meshd.Stderr = &meshLog, &meshLog
	if err := meshd.Start(); err != nil {
		return fmt.Errorf("start meshd: %w (run `make build` first)", err)
	}
	meshdDone := make(chan error, 1)
	go func() { meshdDone <- meshd.Wait() }()
	defer func() {
		_ = meshd.Process.Signal(syscall.SIGTERM)
		select {
		case <-meshdDone:
		case <-time.After(10 * time.Second):
			_ = meshd.Process.Kill()
			<-meshdDone
		}
	}()
	if err := waitReady(ctx, admin, meshdDone); err != nil {
		return fmt.Errorf("%w\nmeshd output:\n%s", err, meshLog.String())
	}
	fmt.Printf("    meshd ready: gRPC on %s, admin on http://%s (/ready /clusters /routes /config_dump)\n", listen, admin)

	cc, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)

	step(fmt.Sprintf("sending %d calls/s for %s through meshd, one client connection", *rate, *duration))
	counts := map[string]int{}
	failures := 0
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	defer tick.Stop()
	start := time.Now()
	total := int(duration.Seconds() * float64(*rate))
	events := map[int]func(){
		total / 4: func() {
			note("users-b reports NOT_SERVING on grpc.health.v1: meshd ejects it at once")
			backends[1].SetServing(false)
		},
		total / 2: func() {
			note("users-b reports SERVING again: meshd re-admits it")
			backends[1].SetServing(true)
		},
		3 * total / 4: func() {
			b, err := startBackend(agent.Client, "users-d")
			if err != nil {
				note("could not start users-d: " + err.Error())
				return
			}
			backends = append(backends, b)
			note("users-d registered in Consul: meshd discovers it and sends it traffic")
		},
	}
	for i := 0; i < total; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if ev, ok := events[i]; ok {
			ev()
		}
		var hdr metadata.MD
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		t0 := time.Now()
		_, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}}, grpc.Header(&hdr))
		cancel()
		took := time.Since(t0)
		who := "-"
		if v := hdr.Get("x-backend"); len(v) > 0 {
			who = v[0]
		}
		if err != nil {
			failures++
			fmt.Printf("    call %3d  %6.2fs  FAILED %s\n", i+1, time.Since(start).Seconds(), status.Convert(err).Message())
			continue
		}
		counts[who]++
		fmt.Printf("    call %3d  %6.2fs  → %-8s %6.2fms\n", i+1, time.Since(start).Seconds(), who, float64(took.Microseconds())/1000)
	}

	step("summary")
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("    %-8s answered %d calls\n", n, counts[n])
	}
	fmt.Printf("    failed calls: %d of %d\n", failures, total)
	if body, err := get("http://" + admin + "/clusters"); err == nil {
		fmt.Println("    meshd's view of the cluster (GET /clusters, abridged):")
		printClusters(body)
	}
	if body, err := get("http://" + admin + "/metrics"); err == nil {
		fmt.Println("    meshd's metrics (GET /metrics, grpc_server_handled_total):")
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "grpc_server_handled_total{") {
				fmt.Println("      " + line)
			}
		}
	}
	printTrace(recv)
	if *keep {
		step("running until Ctrl-C; try: curl http://" + admin + "/clusters")
		select {
		case <-ctx.Done():
		case err := <-meshdDone:
			meshdDone <- err
		}
	}
	step("stopping meshd (SIGTERM: drain, exit 0), the backends and Consul")
	return nil
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
