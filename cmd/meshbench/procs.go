package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshd/meshd/test/backend"
)

// tailBuffer keeps the last limit bytes written to it: enough of a child's
// log to explain a failure, without growing during a long run.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

func newTailBuffer(limit int) *tailBuffer { return &tailBuffer{limit: limit} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.limit; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// child is one process the harness started. Its Wait runs on a goroutine
// owned by the child; stop signals the process by PID and waits for it.
type child struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error // Wait's result, valid once done is closed
}

// startChild starts cmd in its own process group (so a terminal's Ctrl-C
// reaches only the harness, which then stops its children in order) with
// SIGKILL as its parent-death signal (so a killed harness leaves nothing
// behind).
func startChild(name string, cmd *exec.Cmd) (*child, error) {
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	if tb, ok := cmd.Stderr.(*tailBuffer); ok {
		c.out = tb
	}
	if cmd.Stderr == nil {
		c.out = newTailBuffer(64 << 10)
		cmd.Stderr = c.out
		if cmd.Stdout == nil {
			cmd.Stdout = c.out
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("meshbench: start %s: %w", name, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// log is the tail of the child's output.
func (c *child) log() string {
	if c.out == nil {
		return ""
	}
	return c.out.String()
}

// stop sends sig, waits up to grace, then SIGKILLs the process; it returns
// once the process is gone.
func (c *child) stop(sig syscall.Signal, grace time.Duration) {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(sig) // fails only if it already exited
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// serveBackend is the -serve-backend mode: it runs the test backend on
// loopback, writes its address as the first line of stdout, and serves until
// stdin closes (the harness exited or closed the pipe) or a signal arrives.
func serveBackend(stdin io.Reader, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := backend.Start("meshbench")
	if err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	defer b.Stop()
	if _, err := fmt.Fprintln(stdout, b.Addr); err != nil {
		return fmt.Errorf("meshbench: %w", err)
	}
	eof := make(chan struct{})
	go func() { // ends when the harness closes stdin or the process exits
		_, _ = io.Copy(io.Discard, stdin)
		close(eof)
	}()
	select {
	case <-ctx.Done():
	case <-eof:
	}
	return nil
}

// startBackendProcess re-executes the harness in -serve-backend mode and
// returns the process and the backend's address.
func startBackendProcess(ctx context.Context) (*child, io.Closer, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, "", fmt.Errorf("meshbench: find own binary: %w", err)
	}
	cmd := exec.Command(self, "-serve-backend")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, "", fmt.Errorf("meshbench: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, "", fmt.Errorf("meshbench: %w", err)
	}
	cmd.Stderr = newTailBuffer(64 << 10)
	c, err := startChild("backend", cmd)
	if err != nil {
		return nil, nil, "", err
	}
	line := make(chan string, 1)
	go func() { // ends at the first line or when the pipe closes
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case addr := <-line:
		if _, _, err := net.SplitHostPort(addr); err == nil {
			return c, stdin, addr, nil
		}
		err = fmt.Errorf("meshbench: backend did not start: %s", c.log())
	case <-t.C:
		err = errors.New("meshbench: backend did not start within 15s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	stdin.Close()
	c.stop(syscall.SIGTERM, 5*time.Second)
	return nil, nil, "", err
}

// freeAddr returns a loopback address with a port that was free a moment
// ago, for processes whose bound port the harness cannot ask for.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("meshbench: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// meshdConfig routes every call to the one backend. listenerExtra is
// appended to the listener's flow mapping (meshd-grpcweb's grpc_web).
// pprof serves /debug/pprof/ on the admin port (admin.pprof), for
// -meshd-pprof only: off, the config is meshd's default.
func meshdConfig(admin, listen, backendAddr, listenerExtra string, pprof bool) string {
	adminExtra := ""
	if pprof {
		adminExtra = ", pprof: true"
	}
	return fmt.Sprintf(`# written by meshbench
admin: {address: %s%s}
listeners: [{name: main, address: %s%s}]
drain_timeout: 2s
routes:
  - name: all
    match: {prefix: /}
    cluster: backend
clusters:
  - name: backend
    endpoints: [%s]
`, admin, adminExtra, listen, listenerExtra, backendAddr)
}

// errUnavailable marks a target this machine or binary cannot run; it is
// reported, not fatal.
var errUnavailable = errors.New("unavailable")

// startMeshd validates and runs bin/meshd; a config the binary rejects
// makes the target unavailable, anything else that fails is an error.
// pprof: see meshdConfig.
func startMeshd(ctx context.Context, bin, dir, name, backendAddr, listenerExtra string, pprof bool) (*child, string, string, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	c, err := runMeshd(ctx, bin, name, dir+"/"+name+".yaml", admin, meshdConfig(admin, listen, backendAddr, listenerExtra, pprof))
	if err != nil {
		return nil, "", "", err
	}
	return c, listen, admin, nil
}

// runMeshd writes conf to file, validates it with bin and runs bin on it as
// the child name, until its admin /ready answers. A config the binary
// rejects is errUnavailable (an older binary without a feature).
func runMeshd(ctx context.Context, bin, name, file, admin, conf string) (*child, error) {
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("meshbench: %w", err)
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("meshbench: meshd binary %s: %w (run `make build`)", bin, err)
	}
	if out, err := exec.CommandContext(ctx, bin, "validate", "-config", file).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%w: %s rejects its config for %s: %s", errUnavailable, bin, name, strings.TrimSpace(string(out)))
	}
	// -watch-interval 0: no config polling, which would add CPU unrelated to calls.
	c, err := startChild(name, exec.Command(bin, "run", "-config", file, "-log-level", "warn", "-watch-interval", "0"))
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+admin+"/ready", c, 20*time.Second); err != nil {
		c.stop(syscall.SIGTERM, 5*time.Second)
		return nil, fmt.Errorf("meshbench: %s not ready: %w\n%s", name, err, c.log())
	}
	return c, nil
}

// waitHTTP polls url until it answers 200, the child exits or the timeout
// passes.
func waitHTTP(ctx context.Context, url string, c *child, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("exited: %v", c.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// waitTCP polls addr until it accepts a connection.
func waitTCP(ctx context.Context, addr string, c *child, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var d net.Dialer
	for {
		if conn, err := d.DialContext(ctx, "tcp", addr); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("exited: %v", c.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
