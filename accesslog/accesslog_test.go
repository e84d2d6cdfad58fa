package accesslog_test

import (
	"net"

	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/accesslog"
	"github.com/meshd/meshd/callrecord"
)

// readLines parses every line of file as a JSON object.
func readLines(t *testing.T, file string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", len(out)+1, err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func TestLineFormat(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "access.log")
	// An existing file is appended to, not truncated.
	if err := os.WriteFile(file, []byte(`{"previous":"line"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := accesslog.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC)
	l.ObserveCall(&callrecord.Call{
		Method: "/users.v1.Users/GetUser", Route: "users-get", Cluster: "users", Endpoint: "127.0.0.1:9001",
		Code: codes.OK, Start: start, Duration: 1500 * time.Microsecond, Attempts: 2,
		BytesIn: 18, BytesOut: 240, PeerAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}, TraceID: mustTraceID(t, "4bf92f3577b34da6a3ce929d0e0e4736"),
	})
	l.ObserveCall(&callrecord.Call{
		Method: "/nope.S/M", Code: codes.Unimplemented, Start: start, Duration: 20 * time.Microsecond,
		Message: "meshd: no route for method /nope.S/M",
	})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	lines := readLines(t, file)
	if len(lines) != 3 {
		t.Fatalf("%d lines, want the previous one and 2 calls", len(lines))
	}
	if lines[0]["previous"] != "line" {
		t.Errorf("the file was not appended to: first line %v", lines[0])
	}
	want := map[string]any{
		"time": "2025-01-02T15:04:05.0015Z", "msg": "access",
		"method": "/users.v1.Users/GetUser", "route": "users-get", "cluster": "users",
		"endpoint": "127.0.0.1:9001", "code": "OK", "duration_ms": 1.5,
		"bytes_in": 18.0, "bytes_out": 240.0, "attempts": 2.0,
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "peer": "127.0.0.1:5555",
	}
	checkLine(t, lines[1], want)
	checkLine(t, lines[2], map[string]any{
		"method": "/nope.S/M", "route": "", "cluster": "", "endpoint": "", "code": "UNIMPLEMENTED",
		"duration_ms": 0.02, "attempts": 0.0, "trace_id": "", "error": "meshd: no route for method /nope.S/M",
	})
}

func checkLine(t *testing.T, got, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if _, ok := got["level"]; ok {
		t.Errorf("line has a level field: %v", got)
	}
	if _, ok := want["error"]; !ok {
		if _, ok := got["error"]; ok {
			t.Errorf("error field on a call meshd did not fail: %v", got)
		}
	}
}

func TestSampling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ratio float64
		want  int
	}{{0, 0}, {0.25, 25}, {0.5, 50}, {1, 100}, {-1, 0}, {2, 100}} {
		t.Run(fmt.Sprint(tc.ratio), func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "access.log")
			// An evenly spread sequence makes the sampled count exact.
			var n atomic.Int64
			seq := func() float64 { return float64(n.Add(1)%100) / 100 }
			l, err := accesslog.Open(file, accesslog.WithSampleRatio(tc.ratio), accesslog.WithRand(seq))
			if err != nil {
				t.Fatal(err)
			}
			for range 100 {
				l.ObserveCall(&callrecord.Call{Method: "/a.S/M", Code: codes.OK})
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if got := len(readLines(t, file)); got != tc.want {
				t.Errorf("ratio %v: %d lines of 100 calls, want %d", tc.ratio, got, tc.want)
			}
		})
	}
}

// stuckWriter blocks every Write until release is closed, like a pipe
// nobody reads or a hung disk.
type stuckWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestSlowWriterNeverBlocksCalls: with the destination stuck, calls still
// return at once; what does not fit in the queue is dropped and counted.
func TestSlowWriterNeverBlocksCalls(t *testing.T) {
	t.Parallel()
	w := &stuckWriter{release: make(chan struct{})}
	l := accesslog.New(w, accesslog.WithQueueSize(8))
	const calls = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range calls {
			l.ObserveCall(&callrecord.Call{Method: "/a.S/M", Code: codes.OK})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(w.release)
		t.Fatal("ObserveCall blocked on a stuck writer")
	}
	dropped := l.Dropped()
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	written := bytes.Count(w.buf.Bytes(), []byte("\n"))
	if uint64(written)+dropped != calls {
		t.Errorf("written %d + dropped %d != %d calls", written, dropped, calls)
	}
	// What was not dropped waited in the queue (8 lines) or in the one
	// batch the stuck writer holds. That batch keeps taking lines while
	// they arrive faster than it drains, up to 64 KiB plus one line, so
	// the bound depends on the line length.
	lines := bytes.Split(bytes.TrimSpace(w.buf.Bytes()), []byte("\n"))
	shortest := len(lines[0]) + 1
	for _, ln := range lines {
		shortest = min(shortest, len(ln)+1)
	}
	if limit := 8 + (64<<10)/shortest + 1; written > limit || dropped == 0 {
		t.Errorf("%d lines written, %d dropped with a queue of 8: want at most %d kept (queue plus one 64 KiB batch)", written, dropped, limit)
	}
	// After Close, lines are dropped, not written or blocked on.
	l.ObserveCall(&callrecord.Call{Method: "/a.S/M"})
	if l.Dropped() != dropped+1 {
		t.Errorf("a line after Close was not counted as dropped")
	}
}

// TestConcurrentCallsWholeLines: lines from many goroutines are never
// interleaved or lost.
func TestConcurrentCallsWholeLines(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "access.log")
	l, err := accesslog.Open(file, accesslog.WithQueueSize(4000))
	if err != nil {
		t.Fatal(err)
	}
	const workers, per = 8, 250
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				l.ObserveCall(&callrecord.Call{Method: fmt.Sprintf("/w%d.S/M%d", w, i), Code: codes.OK, Attempts: 1})
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, file)
	if len(lines) != workers*per || l.Dropped() != 0 {
		t.Errorf("%d lines, %d dropped, want %d and 0", len(lines), l.Dropped(), workers*per)
	}
}

func TestOpenError(t *testing.T) {
	t.Parallel()
	if _, err := accesslog.Open(filepath.Join(t.TempDir(), "missing-dir", "access.log")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

func mustTraceID(t *testing.T, h string) trace.TraceID {
	t.Helper()
	id, err := trace.TraceIDFromHex(h)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
