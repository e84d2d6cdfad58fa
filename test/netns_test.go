//go:build linux

package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// The netns test's network. Every address lives only inside namespaces the
// test creates and deletes; nothing is routed to or from the host.
//
//	client ns 198.18.4.2 ──┐
//	  b1 ns   198.18.1.2 ──┤   veth pairs   ┌── app ns: the application (a
//	  b2 ns   198.18.2.2 ──┼────────────────┤   gRPC server on :8080 and a
//	  b3 ns   198.18.3.2 ──┘                │   client), meshd as UID 1337,
//	                                         └── iptables from `meshd iptables`
const (
	netnsProxyUID = 1337
	appPort       = 8080
	backendPort   = 9000
	echoPort      = 7000 // opaque TCP: echoes what it reads
	bannerPort    = 7001 // opaque TCP, server speaks first
)

// netnsHost is one namespace besides app, with the app side's and its own
// address on their veth pair.
type netnsHost struct {
	ns, appIP, ip string
}

// TestNetnsSidecar runs meshd as a transparent sidecar for real: an "app"
// network namespace gets meshd's iptables rules (installed by `meshd
// iptables`, the sidecar's init step) and a meshd process running as its
// own UID. The app's client dials backends' ordinary addresses and never
// meshd, and its server is called at its own address from another
// namespace; the test checks that meshd carried every call and routed it by
// the original destination.
func TestNetnsSidecar(t *testing.T) {
	env := newNetnsEnv(t)
	b1, b2, b3, cl := env.hosts[0], env.hosts[1], env.hosts[2], env.hosts[3]

	// Backends in their own namespaces, the application in app's.
	start := func(h netnsHost, name string, opts ...backend.Option) *backend.Backend {
		var b *backend.Backend
		env.in(t, h.ns, func() (err error) {
			b, err = backend.Start(name, append(opts, backend.WithAddr(net.JoinHostPort(h.ip, strconv.Itoa(backendPort))))...)
			return err
		})
		b.SetServing(true)
		t.Cleanup(b.Stop)
		return b
	}
	back1, back2, back3 := start(b1, "b1"), start(b2, "b2"), start(b3, "b3")
	var appPeers sync.Map // remote addresses the application saw
	recordPeer := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			host, _, _ := net.SplitHostPort(p.Addr.String())
			appPeers.Store(host, true)
		}
		return h(ctx, req)
	}
	var app *backend.Backend
	env.in(t, "app", func() (err error) {
		app, err = backend.Start("app", backend.WithAddr(fmt.Sprintf("0.0.0.0:%d", appPort)), backend.WithServerOptions(grpc.UnaryInterceptor(recordPeer)))
		return err
	})
	t.Cleanup(app.Stop)
	env.in(t, b3.ns, func() error { return env.tcpServers(t, b3.ip) })

	// The init step, then the sidecar.
	env.meshdCmd(t, "app", true, "iptables", "-inbound-port", "15006", "-outbound-port", "15001",
		"-proxy-uid", strconv.Itoa(netnsProxyUID), "-exclude-inbound-ports", "15000")
	env.startMeshd(t, fmt.Sprintf(`
admin: {address: 0.0.0.0:15000}
drain_timeout: 2s
listeners:
  - {name: outbound, address: 127.0.0.1:15001, original_dst: {direction: outbound, detect_timeout: 200ms}}
  - {name: inbound, address: 0.0.0.0:15006, original_dst: {direction: inbound}}
routes:
  # A route rule by method and original destination: UnaryCall to b3's
  # address goes to the users cluster instead.
  - name: b3-unary-to-users
    match:
      method: /grpc.testing.TestService/UnaryCall
      headers: [{name: ":original-dst", exact: "%[3]s:%[4]d"}]
    cluster: users
clusters:
  - name: users
    endpoints: [%[1]s:%[4]d, %[2]s:%[4]d]
`, b1.ip, b2.ip, b3.ip, backendPort))

	// The app's client: a plain gRPC client that dials b1's address.
	appCall := func(target string, unary bool) error {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(env.dialer("app")))
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c := testpb.NewTestServiceClient(cc)
		if unary {
			_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{})
		} else {
			_, err = c.EmptyCall(ctx, &testpb.Empty{})
		}
		return err
	}
	b1Addr := net.JoinHostPort(b1.ip, strconv.Itoa(backendPort))
	testkit.WaitFor(t, 15*time.Second, "calls through meshd to succeed", func() bool { return appCall(b1Addr, false) == nil })

	t.Run("outbound to a cluster's endpoint is balanced over the cluster", func(t *testing.T) {
		n1, n2 := back1.Calls(), back2.Calls()
		redirected := env.redirects(t, "MESHD_OUT_REDIRECT")
		cc, err := grpc.NewClient(b1Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(env.dialer("app")))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c := testpb.NewTestServiceClient(cc)
		for i := range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var p peer.Peer
			_, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.Peer(&p))
			cancel()
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if p.Addr.String() != b1Addr {
				t.Fatalf("the app sees its peer as %s, want %s (it must not know meshd)", p.Addr, b1Addr)
			}
		}
		d1, d2 := back1.Calls()-n1, back2.Calls()-n2
		if d1+d2 != 20 || d1 == 0 || d2 == 0 {
			t.Errorf("b1 got %d and b2 %d of 20 calls the app addressed to b1; want both used", d1, d2)
		}
		if got := env.redirects(t, "MESHD_OUT_REDIRECT") - redirected; got != 1 {
			t.Errorf("REDIRECT counted %d new connections, want 1 (the app's one connection)", got)
		}
		t.Logf("20 calls to %s: b1 %d, b2 %d", b1Addr, d1, d2)
	})

	b3Addr := net.JoinHostPort(b3.ip, strconv.Itoa(backendPort))
	t.Run("outbound to an unknown destination passes through", func(t *testing.T) {
		n3, redirected := back3.Calls(), env.redirects(t, "MESHD_OUT_REDIRECT")
		for i := range 5 {
			if err := appCall(b3Addr, false); err != nil {
				t.Fatalf("call %d to %s: %v", i, b3Addr, err)
			}
		}
		if got := back3.Calls() - n3; got != 5 {
			t.Errorf("b3 got %d calls, want 5", got)
		}
		if got := env.redirects(t, "MESHD_OUT_REDIRECT") - redirected; got != 5 {
			t.Errorf("REDIRECT counted %d new connections, want 5: the calls bypassed meshd", got)
		}
	})

	t.Run("a route rule by method and original destination", func(t *testing.T) {
		n1, n2, n3 := back1.Calls(), back2.Calls(), back3.Calls()
		for i := range 6 {
			if err := appCall(b3Addr, true); err != nil {
				t.Fatalf("UnaryCall %d to %s: %v", i, b3Addr, err)
			}
		}
		if back3.Calls() != n3 || (back1.Calls()-n1)+(back2.Calls()-n2) != 6 {
			t.Errorf("UnaryCalls to b3's address: b1 +%d, b2 +%d, b3 +%d; want all 6 on the users cluster",
				back1.Calls()-n1, back2.Calls()-n2, back3.Calls()-n3)
		}
	})

	t.Run("opaque TCP is relayed to its original destination", func(t *testing.T) {
		redirected := env.redirects(t, "MESHD_OUT_REDIRECT")
		// meshd's gRPC connection counts of the outbound listener: a
		// relayed connection is not one of them, nor a misbehaving one.
		admin := env.admin(cl)
		counts := func() (accepted, closed float64) {
			for k, v := range env.scrape(t, cl, admin) {
				switch {
				case !strings.Contains(k, `listener="outbound"`):
				case strings.HasPrefix(k, "meshd_listener_connections_accepted_total{"):
					accepted += v
				case strings.HasPrefix(k, "meshd_listener_connections_closed_total{"):
					closed += v
				}
			}
			return accepted, closed
		}
		accepted, closed := counts()
		if accepted == 0 {
			t.Fatal("/metrics has no accepted connections on the outbound listener, which carried the earlier calls")
		}
		dial := env.dialer("app")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Client speaks first (an HTTP/1.1 request, say).
		c, err := dial(ctx, net.JoinHostPort(b3.ip, strconv.Itoa(echoPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := "GET / HTTP/1.1\r\nHost: b3\r\n\r\n"
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != msg {
			t.Errorf("echo through the relay: %q, %v; want %q", got, err, msg)
		}
		// Server speaks first (SMTP, MySQL): meshd waits detect_timeout for
		// bytes that never come, then relays.
		c2, err := dial(ctx, net.JoinHostPort(b3.ip, strconv.Itoa(bannerPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		c2.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c2).ReadString('\n')
		if err != nil || line != "220 b3 ready\n" {
			t.Errorf("banner through the relay: %q, %v", line, err)
		}
		if got := env.redirects(t, "MESHD_OUT_REDIRECT") - redirected; got != 2 {
			t.Errorf("REDIRECT counted %d new connections, want 2", got)
		}
		if a, c := counts(); a != accepted || c != closed {
			t.Errorf("outbound listener: connections accepted %v → %v, closed for misbehaving %v → %v; "+
				"want both unchanged by opaque relays", accepted, a, closed, c)
		}
	})

	t.Run("inbound calls reach the app through meshd", func(t *testing.T) {
		appAddr := net.JoinHostPort(cl.appIP, strconv.Itoa(appPort))
		n, redirected := app.Calls(), env.redirects(t, "MESHD_IN_REDIRECT")
		cc, err := grpc.NewClient(appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(env.dialer(cl.ns)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		for i := range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
			cancel()
			if err != nil {
				t.Fatalf("inbound call %d: %v", i, err)
			}
		}
		if got := app.Calls() - n; got != 5 {
			t.Errorf("the app got %d calls, want 5", got)
		}
		if got := env.redirects(t, "MESHD_IN_REDIRECT") - redirected; got != 1 {
			t.Errorf("inbound REDIRECT counted %d new connections, want 1", got)
		}
		// meshd called the app at the app's own address; the client, from
		// its namespace, never reached the app directly.
		if _, direct := appPeers.Load(cl.ip); direct {
			t.Errorf("the app saw the client's address %s: the call bypassed meshd", cl.ip)
		}
		if _, viaMeshd := appPeers.Load(cl.appIP); !viaMeshd {
			t.Errorf("the app never saw meshd's connection from %s", cl.appIP)
		}
	})
}

// netnsEnv owns the namespaces, the meshd binary and the processes of one
// test; t.Cleanup undoes each step even when the test fails half-way.
type netnsEnv struct {
	suffix string
	hosts  []netnsHost
	bin    string // the meshd binary
	dir    string // world-readable: meshd runs as another UID
}

func newNetnsEnv(t *testing.T) *netnsEnv {
	t.Helper()
	e := newNetnsBase(t)
	e.addNetns(t, "app")
	for i, h := range []string{"b1", "b2", "b3", "client"} {
		ns := e.name(h)
		e.addNetns(t, h)
		hst := netnsHost{ns: ns, appIP: fmt.Sprintf("198.18.%d.1", i+1), ip: fmt.Sprintf("198.18.%d.2", i+1)}
		appIf, hostIf := fmt.Sprintf("veth%d", i), "eth0"
		run(t, "ip", "link", "add", appIf, "netns", e.name("app"), "type", "veth", "peer", "name", hostIf, "netns", ns)
		run(t, "ip", "-n", e.name("app"), "addr", "add", hst.appIP+"/24", "dev", appIf)
		run(t, "ip", "-n", e.name("app"), "link", "set", appIf, "up")
		run(t, "ip", "-n", ns, "addr", "add", hst.ip+"/24", "dev", hostIf)
		run(t, "ip", "-n", ns, "link", "set", hostIf, "up")
		e.hosts = append(e.hosts, hst)
	}
	return e
}

// newNetnsBase skips unless namespaces can be made here, and builds the
// meshd binary; the caller adds its namespaces and links.
func newNetnsBase(t *testing.T) *netnsEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the netns test needs root to create network namespaces")
	}
	for _, bin := range []string{"ip", "iptables-restore", "iptables-save", "setpriv"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (scripts/install-netns-tools.sh installs iproute2 and iptables): %v", bin, err)
		}
	}
	e := &netnsEnv{suffix: strconv.Itoa(os.Getpid())}
	probe := e.name("probe")
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("skipping: network namespaces cannot be created here: %v: %s", err, out)
	}
	run(t, "ip", "netns", "del", probe)

	dir, err := os.MkdirTemp("", "meshd-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.dir, e.bin = dir, buildMeshd(t)
	return e
}

// name is the system-wide name of the test's namespace short.
func (e *netnsEnv) name(short string) string {
	if strings.HasPrefix(short, "meshd-") {
		return short
	}
	return "meshd-" + short + "-" + e.suffix
}

// addNetns creates a namespace with loopback up, deleted at cleanup (which
// also deletes its veths and its iptables rules).
func (e *netnsEnv) addNetns(t *testing.T, short string) {
	t.Helper()
	ns := e.name(short)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
}

// in runs fn on an OS thread switched into namespace ns. Sockets keep the
// namespace they were created in, so a listener or connection made by fn
// stays there after the thread switches back.
func (e *netnsEnv) in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := inNetns(e.name(ns), fn); err != nil {
		t.Fatalf("in netns %s: %v", ns, err)
	}
}

func inNetns(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime ends it with the goroutine
		// rather than reuse a thread in the wrong namespace.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// dialer dials from namespace ns, for grpc.WithContextDialer.
func (e *netnsEnv) dialer(ns string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(e.name(ns), func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
}

// admin is meshd's admin address as seen from h's namespace (the admin
// port is excluded from inbound interception).
func (e *netnsEnv) admin(h netnsHost) string {
	return net.JoinHostPort(h.appIP, "15000")
}

// scrape fetches meshd's /metrics from h's namespace and returns every
// sample by its series as the text format writes it.
func (e *netnsEnv) scrape(t *testing.T, h netnsHost, admin string) map[string]float64 {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return e.dialer(h.ns)(ctx, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	return testkit.Scrape(t, c, "http://"+admin+"/metrics").Samples()
}

// tcpServers starts the two opaque TCP servers on ip (call it inside the
// namespace): echo, and a banner server that speaks first.
func (e *netnsEnv) tcpServers(t *testing.T, ip string) error {
	for port, serve := range map[int]func(net.Conn){
		echoPort: func(c net.Conn) { io.Copy(c, c) },
		bannerPort: func(c net.Conn) {
			io.WriteString(c, "220 b3 ready\n")
			io.Copy(io.Discard, c)
		},
	} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		testkit.Serve(t, l, serve)
	}
	return nil
}

// meshdCmd runs the meshd binary to completion inside namespace ns, as
// root (the iptables init step) when root is set, else as the proxy UID.
func (e *netnsEnv) meshdCmd(t *testing.T, ns string, root bool, args ...string) string {
	t.Helper()
	out, err := e.command(ns, root, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("meshd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if args[0] == "iptables" {
		t.Cleanup(func() {
			if out, err := e.command(ns, true, "iptables", "-cleanup").CombinedOutput(); err != nil {
				t.Errorf("meshd iptables -cleanup: %v\n%s", err, out)
			}
			if out, _ := exec.Command("ip", "netns", "exec", e.name(ns), "iptables-save", "-t", "nat").Output(); bytes.Contains(out, []byte("MESHD_")) {
				t.Errorf("iptables rules left after cleanup:\n%s", out)
			}
		})
	}
	return string(out)
}

func (e *netnsEnv) command(ns string, root bool, args ...string) *exec.Cmd {
	full := []string{"netns", "exec", e.name(ns)}
	if !root {
		uid := strconv.Itoa(netnsProxyUID)
		full = append(full, "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups")
	}
	full = append(append(full, e.bin), args...)
	return exec.Command("ip", full...)
}

// startMeshd runs `meshd run` in app as the proxy UID until cleanup, which
// sends SIGTERM and expects a clean exit.
func (e *netnsEnv) startMeshd(t *testing.T, yaml string) *netnsMeshd {
	t.Helper()
	return e.startMeshdIn(t, "app", yaml)
}

// netnsMeshd is a meshd process a test started in a namespace.
type netnsMeshd struct {
	cmd  *exec.Cmd
	cfg  string // its config file, world-readable
	logs *syncBuffer
}

// startMeshdIn runs `meshd run` in namespace ns as the proxy UID, with
// yaml in a config file of its own, until cleanup, which sends SIGTERM and
// expects a clean exit.
func (e *netnsEnv) startMeshdIn(t *testing.T, ns, yaml string) *netnsMeshd {
	t.Helper()
	p := &netnsMeshd{cfg: filepath.Join(e.dir, ns+".yaml"), logs: &syncBuffer{}}
	if err := os.WriteFile(p.cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := e.command(ns, false, "run", "-config", p.cfg, "-log-level", "debug")
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// ip netns exec and setpriv exec meshd in place: the PID is meshd's.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("meshd in %s exited with %v", ns, err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("meshd in %s did not stop within 20s of SIGTERM", ns)
		}
		if t.Failed() {
			t.Logf("meshd log (%s):\n%s", ns, p.logs.String())
		}
	})
	return p
}

// redirects is the packet count of the REDIRECT rule in chain: the number
// of connections it redirected (the nat table sees a connection's first
// packet only).
func (e *netnsEnv) redirects(t *testing.T, chain string) int {
	t.Helper()
	return e.redirectsIn(t, "app", chain)
}

// redirectsIn is redirects in namespace ns.
func (e *netnsEnv) redirectsIn(t *testing.T, ns, chain string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.name(ns), "iptables", "-t", "nat", "-L", chain, "-n", "-v", "-x").Output()
	if err != nil {
		t.Fatalf("iptables -L %s: %v", chain, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "REDIRECT" {
			n, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("iptables -L %s: %q", chain, line)
			}
			return n
		}
	}
	t.Fatalf("no REDIRECT rule in %s:\n%s", chain, out)
	return 0
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
