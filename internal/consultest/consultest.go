package consultest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	// NodeName is the node name of every agent started here.
	NodeName = "consultest"
	// Datacenter is the datacenter of a dev agent.
	Datacenter = "dc1"

	// readyTimeout bounds the wait for a leader and a catalog: generous,
	// because CI shares two cores between several test binaries.
	readyTimeout = 60 * time.Second
	// stopTimeout is how long Close waits after SIGTERM before SIGKILL.
	stopTimeout = 5 * time.Second
)

// Binary returns the path of the consul binary: $MESHD_CONSUL_BIN if set,
// else where scripts/install-consul.sh installs it:
// $MESHD_CACHE/consul-$MESHD_CONSUL_VERSION/consul, the cache defaulting to
// ${XDG_CACHE_HOME:-$HOME/.cache}/meshd and the version to v1.14.11.
// Binary never builds Consul (that takes minutes; `make consul` does it
// once) and never skips the test: without the binary the test fails,
// naming the command that installs it.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Defaults of scripts/install-consul.sh, which installedPath must follow.
const (
	defaultVersion = "v1.14.11"
	cacheSubdir    = "meshd"
)

func findBinary() (string, error) {
	if bin := os.Getenv("MESHD_CONSUL_BIN"); bin != "" {
		return bin, nil
	}
	bin, err := installedPath()
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(bin)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("consultest: no consul binary at %s (MESHD_CONSUL_BIN is unset): "+
			"run `make consul` (or scripts/install-consul.sh) once to build it there, or set MESHD_CONSUL_BIN", bin)
	}
	return bin, nil
}

// installedPath is the path scripts/install-consul.sh installs the binary
// at, computed as the script does (an empty variable counts as unset, as
// in the script's ${VAR:-default}).
func installedPath() (string, error) {
	version := os.Getenv("MESHD_CONSUL_VERSION")
	if version == "" {
		version = defaultVersion
	}
	cache := os.Getenv("MESHD_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("consultest: find the consul cache: %w; set MESHD_CONSUL_BIN", err)
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, cacheSubdir)
	}
	return filepath.Join(cache, "consul-"+version, "consul"), nil
}

// Option configures an agent.
type Option func(*config)

type config struct {
	aclToken string
}

// WithACLs enables ACLs with default policy "deny" and managementToken as the
// initial management token. Agent.Client and Agent.Token carry that token;
// other clients must bring their own.
func WithACLs(managementToken string) Option {
	return func(c *config) { c.aclToken = managementToken }
}

// Agent is a running `consul agent -dev` on free loopback ports. Its methods
// are safe for concurrent use.
type Agent struct {
	// Addr is the host:port of the HTTP API.
	Addr string
	// Client talks to the agent's HTTP API (with Token, if ACLs are on).
	Client *api.Client
	// Token is the ACL management token ("" without ACLs).
	Token string

	bin       string
	dir       string // owned temp dir: the agent's log
	logPath   string
	args      []string
	transport *http.Transport

	mu     sync.Mutex
	proc   *process // nil while stopped
	closed bool
}

// process is one run of the agent binary. Its wait goroutine is owned by the
// Agent, which always kills the process and waits for done.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

// Start runs an agent for the life of t: it fails t if the agent cannot start
// and becomes ready, and stops it (removing its files) in t.Cleanup.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	a, err := Launch(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

// Launch runs an agent that the caller must Close; it is for TestMain, where
// no testing.TB exists, to share one agent between a package's tests. It
// returns once the agent has elected itself leader and registered its node
// in the catalog.
func Launch(opts ...Option) (*Agent, error) {
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "consultest-")
	if err != nil {
		return nil, fmt.Errorf("consultest: %w", err)
	}
	// Free ports are found by binding :0 and closing, so another process
	// may take one before the agent binds it; one retry on fresh ports
	// makes that race practically harmless.
	for attempt := 1; ; attempt++ {
		a, err := newAgent(bin, dir, cfg)
		if err == nil {
			// start kills what it started when the agent is not ready.
			err = a.start()
			if err == nil {
				return a, nil
			}
		}
		if attempt == 2 || !strings.Contains(err.Error(), "address already in use") {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func newAgent(bin, dir string, cfg config) (*Agent, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	httpPort, serfLAN, serfWAN, server := ports[0], ports[1], ports[2], ports[3]
	args := []string{
		"agent", "-dev",
		"-node", NodeName,
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-http-port", strconv.Itoa(httpPort),
		"-serf-lan-port", strconv.Itoa(serfLAN),
		"-serf-wan-port", strconv.Itoa(serfWAN),
		"-server-port", strconv.Itoa(server),
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-grpc-tls-port", "-1",
		"-log-level", "warn",
	}
	if cfg.aclToken != "" {
		args = append(args, "-hcl", fmt.Sprintf(
			`acl { enabled = true default_policy = "deny" tokens { initial_management = %q } }`, cfg.aclToken))
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	transport := http.DefaultTransport.(*http.Transport).Clone()
	client, err := api.NewClient(&api.Config{
		Address:   addr,
		Scheme:    "http",
		Token:     cfg.aclToken,
		Transport: transport,
	})
	if err != nil {
		return nil, fmt.Errorf("consultest: client: %w", err)
	}
	return &Agent{
		Addr:      addr,
		Client:    client,
		Token:     cfg.aclToken,
		bin:       bin,
		dir:       dir,
		logPath:   filepath.Join(dir, "agent.log"),
		args:      args,
		transport: transport,
	}, nil
}

// freePorts returns n distinct loopback ports that were free for both TCP
// and UDP (serf gossips over both on one port).
func freePorts(n int) ([]int, error) {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n && tries < 50; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("consultest: free port: %w", err)
		}
		closers = append(closers, l.Close)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // UDP twin taken: keep the TCP one held so it is not picked again
		}
		closers = append(closers, u.Close)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, errors.New("consultest: no free TCP+UDP loopback ports")
	}
	return ports, nil
}

// start runs the binary and waits until the agent is ready.
func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("consultest: agent closed")
	}
	if a.proc != nil {
		return errors.New("consultest: agent already running")
	}
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("consultest: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "==== consultest: %s %s\n", a.bin, strings.Join(a.args, " "))
	cmd := exec.Command(a.bin, a.args...)
	// An *os.File needs no copying goroutine; the agent writes it directly.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("consultest: start %s: %w", a.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	a.proc = p
	if err := a.waitReady(p); err != nil {
		a.killLocked(syscall.SIGKILL, 0)
		return fmt.Errorf("%w\nagent log (%s):\n%s", err, a.logPath, a.logTail())
	}
	return nil
}

// waitReady polls until a leader is elected and the agent's node is in the
// catalog: only then do registrations reach the catalog and health queries
// answer.
func (a *Agent) waitReady(p *process) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("consultest: agent exited before it was ready: %v", p.err)
		case <-tick.C:
		}
		lastErr = a.ready()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consultest: agent not ready after %v: %w", readyTimeout, lastErr)
		}
	}
}

func (a *Agent) ready() error {
	leader, err := a.Client.Status().Leader()
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	node, _, err := a.Client.Catalog().Node(NodeName, nil)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return errors.New("node not in the catalog yet")
	}
	return nil
}

// Stop kills the agent (SIGKILL, as a crash would) and waits for it to exit.
// It is for tests of "Consul lost"; Restart brings it back. Stopping a stopped
// agent does nothing.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.killLocked(syscall.SIGKILL, 0)
}

// Restart starts a stopped agent again on the same ports (stopping it first
// if it runs). Dev mode keeps no state, so services must be registered again.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	a.killLocked(syscall.SIGKILL, 0)
	a.mu.Unlock()
	// The old sockets are gone once the process exited, but a port may
	// briefly linger or be taken; one retry covers it.
	err := a.start()
	if err != nil && strings.Contains(err.Error(), "address already in use") {
		err = a.start()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Close stops the agent (SIGTERM, then SIGKILL after a few seconds), waits
// for it and removes its files. It is idempotent; Start registers it with
// t.Cleanup.
func (a *Agent) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	a.killLocked(syscall.SIGTERM, stopTimeout)
	os.RemoveAll(a.dir)
}

// killLocked signals the running process, waits grace for it to exit, then
// SIGKILLs it and waits. It drops the client's idle connections, whose
// reader goroutines would otherwise outlive the agent until the kernel
// notices. a.mu must be held.
func (a *Agent) killLocked(sig syscall.Signal, grace time.Duration) {
	p := a.proc
	if p == nil {
		return
	}
	a.proc = nil
	p.cmd.Process.Signal(sig)
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
	p.cmd.Process.Kill()
	<-p.done
	a.transport.CloseIdleConnections()
}

// Register registers a service with the agent (which syncs it to the catalog
// shortly after; poll for it).
func (a *Agent) Register(t testing.TB, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := a.Client.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("consultest: register %s/%s: %v", reg.Name, reg.ID, err)
	}
}

// Deregister removes a service registered with Register.
func (a *Agent) Deregister(t testing.TB, id string) {
	t.Helper()
	if err := a.Client.Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("consultest: deregister %s: %v", id, err)
	}
}

// SetTTL sets the status of a TTL check: "passing", "warning" or "critical"
// (or "pass", "warn", "fail").
func (a *Agent) SetTTL(t testing.TB, checkID, status string) {
	t.Helper()
	if err := a.Client.Agent().UpdateTTL(checkID, "set by consultest", status); err != nil {
		t.Fatalf("consultest: set TTL check %s to %s: %v", checkID, status, err)
	}
}

// LogTail returns the last lines of the agent's output, for test failures.
func (a *Agent) LogTail() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.logTail()
}

func (a *Agent) logTail() string {
	b, err := os.ReadFile(a.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tail(b)
}

// tail returns the last 40 lines of b.
func tail(b []byte) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
