package test

import (
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
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// buildMeshd builds bin/meshd into a temp dir and returns its path.
func buildMeshd(t *testing.T) string {
	t.Helper()
	meshdBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "meshd-bin-")
		if err != nil {
			meshdBinary.err = err
			return
		}
		meshdBinary.dir = dir
		// Readable by the unprivileged users the netns tests run it as.
		if err := os.Chmod(dir, 0o755); err != nil {
			meshdBinary.err = err
			return
		}
		out := filepath.Join(dir, "meshd")
		if b, err := exec.Command("go", "build", "-o", out, "github.com/meshd/meshd/cmd/meshd").CombinedOutput(); err != nil {
			meshdBinary.err = fmt.Errorf("go build ./cmd/meshd: %w\n%s", err, b)
			return
		}
		meshdBinary.path = out
	})
	if meshdBinary.err != nil {
		t.Fatal(meshdBinary.err)
	}
	return meshdBinary.path
}

// meshdBinary is cmd/meshd built once for the whole test binary: every
// test that runs meshd as a process shares it (each link of the 40 MB
// binary was seconds of CPU on two cores). TestMain removes it.
var meshdBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// meshdProc is a running meshd binary.
type meshdProc struct {
	cmd   *exec.Cmd
	addr  string // the main listener
	admin string
	// exited is closed once the process has exited; err is Wait's result.
	exited chan struct{}
	err    error
	mu     sync.Mutex
	log    strings.Builder
}

// Log is what the process wrote to stderr so far.
func (p *meshdProc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// startBinary runs `meshd run -config file args...` and returns once it
// logged its listener and admin addresses. The process is killed (by PID)
// at cleanup if it is still running.
func startBinary(t *testing.T, bin, file string, args ...string) *meshdProc {
	t.Helper()
	p := &meshdProc{cmd: exec.Command(bin, append([]string{"run", "-config", file}, args...)...), exited: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	go func() {
		// The reader ends when the process exits (EOF); Wait comes after
		// it, as os/exec requires.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct {
				Msg       string            `json:"msg"`
				Listeners map[string]string `json:"listeners"`
				Admin     string            `json:"admin"`
			}
			if !found && json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "meshd serving" {
				found = true
				p.addr, p.admin = rec.Listeners["main"], rec.Admin
				close(serving)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case <-serving:
	case <-p.exited:
		t.Fatalf("meshd exited before serving: %v\n%s", p.err, p.Log())
	case <-time.After(30 * time.Second):
		t.Fatalf("meshd did not log its addresses within 30s\n%s", p.Log())
	}
	return p
}

// writeConfig writes content to a new file and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// readyCode is /ready's status code, or 0 when the admin port is gone.
func readyCode(admin string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/ready")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// drainConfig routes everything to bs with the given drain_timeout.
func drainConfig(bs []*backend.Backend, drain time.Duration) string {
	return strings.Replace(simpleConfig(bs, ""), "drain_timeout: 5s", "drain_timeout: "+drain.String(), 1)
}

// TestDrainBinary sends SIGTERM to the real binary with streams open: /ready
// fails at once, new connections are refused, open streams keep working
// and finish, and meshd exits 0 within drain_timeout — or, for a stream
// that will not end, right after drain_timeout.
func TestDrainBinary(t *testing.T) {
	t.Parallel()
	bin := buildMeshd(t)

	t.Run("50 streams finish within drain_timeout", func(t *testing.T) {
		t.Parallel()
		const drain, nStreams = 10 * time.Second, 50
		bs := startBackends(t, "drain", 1)
		p := startBinary(t, bin, writeConfig(t, drainConfig(bs, drain)))
		cc := dial(t, p.addr)
		waitServing(t, cc)
		client := testpb.NewTestServiceClient(cc)
		if c := readyCode(p.admin); c != http.StatusOK {
			t.Fatalf("/ready = %d before SIGTERM", c)
		}
		ping := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 16}}}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		streams := make([]testpb.TestService_FullDuplexCallClient, nStreams)
		for i := range streams {
			st, err := client.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(ping); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Recv(); err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			streams[i] = st
		}

		sigAt := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// The streams carry on for a while after SIGTERM, then finish.
		var wg sync.WaitGroup
		errs := make(chan error, nStreams)
		for i, st := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 6 {
					pause := time.NewTimer(50 * time.Millisecond) // pacing: the stream stays busy during the drain
					<-pause.C
					if err := st.Send(ping); err != nil {
						errs <- fmt.Errorf("stream %d send %d after SIGTERM: %w", i, j, err)
						return
					}
					if _, err := st.Recv(); err != nil {
						errs <- fmt.Errorf("stream %d recv %d after SIGTERM: %w", i, j, err)
						return
					}
				}
				if err := st.CloseSend(); err != nil {
					errs <- err
					return
				}
				if _, err := st.Recv(); err != io.EOF {
					errs <- fmt.Errorf("stream %d ended with %v, want OK", i, err)
				}
			}()
		}

		testkit.WaitFor(t, 2*time.Second, "/ready to fail", func() bool { return readyCode(p.admin) != http.StatusOK })
		readyAt := time.Since(sigAt)
		testkit.WaitFor(t, 2*time.Second, "new connections to be refused", func() bool {
			c, err := net.DialTimeout("tcp", p.addr, time.Second)
			if err != nil {
				return errors.Is(err, syscall.ECONNREFUSED)
			}
			c.Close()
			return false
		})
		refusedAt := time.Since(sigAt)

		wg.Wait()
		streamsAt := time.Since(sigAt)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		select {
		case <-p.exited:
		case <-time.After(drain + 5*time.Second):
			t.Fatalf("meshd still running %v after SIGTERM\n%s", time.Since(sigAt), p.Log())
		}
		exitAt := time.Since(sigAt)
		if p.err != nil {
			t.Fatalf("meshd exited with %v, want 0\n%s", p.err, p.Log())
		}
		t.Logf("SIGTERM with %d streams: /ready failing after %v, connections refused after %v, streams all OK after %v, exit 0 after %v (drain_timeout %v)",
			nStreams, readyAt.Round(time.Millisecond), refusedAt.Round(time.Millisecond), streamsAt.Round(time.Millisecond), exitAt.Round(time.Millisecond), drain)
		if exitAt > drain {
			t.Errorf("exit after %v, past drain_timeout %v", exitAt, drain)
		}
		if exitAt-streamsAt > 2*time.Second {
			t.Errorf("meshd took %v to exit after the last stream ended", exitAt-streamsAt)
		}
	})

	t.Run("a stream outliving drain_timeout is cut at it", func(t *testing.T) {
		t.Parallel()
		const drain = time.Second
		bs := startBackends(t, "cut", 1)
		p := startBinary(t, bin, writeConfig(t, drainConfig(bs, drain)))
		cc := dial(t, p.addr)
		waitServing(t, cc)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st := testkit.OpenStream(t, ctx, testpb.NewTestServiceClient(cc))
		sigAt := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_, err := st.Recv() // blocks until meshd cuts the stream
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Fatalf("meshd still running %v after SIGTERM\n%s", time.Since(sigAt), p.Log())
		}
		exitAt := time.Since(sigAt)
		if p.err != nil {
			t.Fatalf("meshd exited with %v, want 0", p.err)
		}
		if err == nil || err == io.EOF {
			t.Fatalf("the open stream ended cleanly (%v); it should have been cut", err)
		}
		t.Logf("a stream that never ends: cut with %v, exit 0 after %v (drain_timeout %v)", err, exitAt.Round(time.Millisecond), drain)
		if exitAt < drain-100*time.Millisecond || exitAt > drain+3*time.Second {
			t.Errorf("exit after %v, want just after drain_timeout %v", exitAt, drain)
		}
	})
}
