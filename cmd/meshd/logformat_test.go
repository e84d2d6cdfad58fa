package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// durationKeys are the keys meshd's lines carry time.Durations under.
var durationKeys = map[string]bool{"timeout": true, "every": true, "retry_in": true, "hold": true}

func TestLoggerFormats(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		format string
		want   string
	}{
		{logFormatJSON, `"timeout":"10s","group":{"wait":"1.5ms"}`},
		{logFormatText, `timeout=10s group.wait=1.5ms`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			log, err := newLogger(&buf, tc.format, slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			log.Info("draining", "timeout", 10*time.Second, slog.Group("group", "wait", 1500*time.Microsecond))
			if !strings.Contains(buf.String(), tc.want) {
				t.Errorf("line %q, want it to contain %q", buf.String(), tc.want)
			}
		})
	}
	if _, err := newLogger(io.Discard, "yaml", slog.LevelInfo); !errors.Is(err, errUsage) {
		t.Errorf("newLogger(yaml) = %v, want a usage error", err)
	}
	if code, _, errOut := runCmd("run", "-config", "x.yaml", "-log-format", "yaml"); code != 2 || !strings.Contains(errOut, "-log-format") {
		t.Errorf("run -log-format yaml: exit %d, stderr %q; want 2 and a message naming the flag", code, errOut)
	}
}

// TestLogLinesParse runs meshd with the logger `meshd run -log-format json
// -log-level debug` builds, through what writes most of its lines (static
// clusters, no Consul, come up; a mesh identity from files loads; a call; a
// health ejection; a reload adding a cluster; the drain), and checks every
// line: valid JSON, each key once at every level of nesting, an endpoint's
// address only when it is not its ID, durations as Go duration strings.
func TestLogLinesParse(t *testing.T) {
	t.Parallel()
	a, err := backend.Start("a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	b, err := backend.Start("b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	a.SetServing(true)
	b.SetServing(true)

	dir := t.TempDir()
	ca := testkit.NewCA(t, "mesh-ca")
	cert, key, _ := ca.IssueSPIFFE(t, "spiffe://logs.consul/ns/default/dc/dc1/svc/web")
	for name, pem := range map[string][]byte{"leaf.pem": cert, "leaf.key": key, "ca.pem": ca.PEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mesh := fmt.Sprintf("mesh: {service: web, identity: files, default_action: allow, cert_file: %s, key_file: %s, ca_file: %s}",
		filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "leaf.key"), filepath.Join(dir, "ca.pem"))
	conf := mesh + `
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - name: all
    match: {prefix: /}
    cluster: users
    timeout: %s
clusters:
  - name: users
    endpoints: [%s, %s]
%s
drain_timeout: 2s
`
	file := writeConfig(t, fmt.Sprintf(conf, "5s", a.Addr, b.Addr, ""))
	var out lockedBuffer
	log, err := newLogger(&out, logFormatJSON, slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	srv, tel, err := newServer(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		reloadLoop(ctx, file, 50*time.Millisecond, srv, log)
	}()
	select {
	case <-srv.Serving():
	case err := <-runDone:
		t.Fatalf("meshd did not start: %v", err)
	}

	cc, err := grpc.NewClient(srv.ListenerAddrs()["main"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	testkit.WaitFor(t, 20*time.Second, "a call through meshd", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
		return err == nil
	})

	// An ejection: b's health says NOT_SERVING.
	b.SetServing(false)
	testkit.WaitFor(t, 20*time.Second, "b's ejection in the log", func() bool {
		return out.contains(`"msg":"endpoint state changed"`) && out.contains(`"to":"ejected"`)
	})

	// A reload that adds a cluster (its endpoints come up on the log).
	extra := fmt.Sprintf("  - name: orders\n    endpoints: [%s]", a.Addr)
	if err := os.WriteFile(file, []byte(fmt.Sprintf(conf, "3s", a.Addr, b.Addr, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the reload in the log", func() bool {
		return out.contains(`"msg":"config reloaded"`)
	})

	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("Run: %v", err)
	}
	<-reloadDone
	if err := tel.close(); err != nil {
		t.Errorf("telemetry close: %v", err)
	}

	lines, durations := 0, 0
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		line := sc.Text()
		fields, err := checkKeysOnce(line)
		if err != nil {
			t.Errorf("%v in line %s", err, line)
			continue
		}
		if ep, ok := fields["endpoint"]; ok && fields["address"] == ep {
			t.Errorf("endpoint and address both %v in line %s", ep, line)
		}
		for k, v := range fields {
			if !durationKeys[k] {
				continue
			}
			durations++
			s, ok := v.(string)
			if !ok {
				t.Errorf("%q is %v (%T), want a duration string, in line %s", k, v, v, line)
				continue
			}
			if _, err := time.ParseDuration(s); err != nil {
				t.Errorf("%q: %v, in line %s", k, err, line)
			}
		}
	}
	// The drain line says its timeout; without it this test checks
	// durations in nothing.
	if durations == 0 || !out.contains(`"msg":"draining","timeout":"2s"`) {
		t.Errorf("no duration-valued key in %d lines (want at least the drain's timeout):\n%s", lines, out.String())
	}
	for _, want := range []string{`"msg":"endpoint added"`, `"component":"balancer"`, `"msg":"config reloaded"`, `"msg":"mesh identity ready"`} {
		if !out.contains(want) {
			t.Errorf("no %s line in:\n%s", want, out.String())
		}
	}
	t.Logf("%d lines checked", lines)
}

// checkKeysOnce parses one JSON log line token by token (encoding/json's
// Unmarshal keeps the last of a repeated key without a word) and returns
// an error naming any key repeated within one object, at any depth; else
// the line's top-level scalar fields.
func checkKeysOnce(line string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	top := map[string]any{}
	if _, err := walkJSON(dec, "", top); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data (%v)", err)
	}
	return top, nil
}

// walkJSON reads one value from dec, path naming it in errors, and returns
// it if it is a scalar. Within an object each key must be new; fields, when
// not nil, receives the object's scalar members.
func walkJSON(dec *json.Decoder, path string, fields map[string]any) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	if d == '[' {
		for i := 0; dec.More(); i++ {
			if _, err := walkJSON(dec, fmt.Sprintf("%s[%d]", path, i), nil); err != nil {
				return nil, err
			}
		}
	} else {
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k := kt.(string)
			if seen[k] {
				return nil, fmt.Errorf("key %q repeated in object %q", k, path)
			}
			seen[k] = true
			v, err := walkJSON(dec, path+"."+k, nil)
			if err != nil {
				return nil, err
			}
			if fields != nil && v != nil {
				fields[k] = v
			}
		}
	}
	_, err = dec.Token() // the closing delim
	return nil, err
}

func TestCheckKeysOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{`{"a":1,"b":"x","c":{"d":[1,{"e":2}]}}`, true},
		{`{"a":1,"a":2}`, false},
		{`{"c":{"d":1,"d":2}}`, false},
		{`{"c":[{"d":1},{"d":1,"d":1}]}`, false},
		{`{"a":{"x":1},"b":{"x":1}}`, true},
		{`{"a":1`, false},
	} {
		_, err := checkKeysOnce(tc.line)
		if (err == nil) != tc.ok {
			t.Errorf("checkKeysOnce(%s) = %v, want ok=%v", tc.line, err, tc.ok)
		}
	}
}

// lockedBuffer is an io.Writer the server's goroutines can share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *lockedBuffer) contains(s string) bool { return strings.Contains(b.String(), s) }
