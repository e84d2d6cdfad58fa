package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// configDump is the part of /config_dump the reload tests read.
type configDump struct {
	ReloadsOK     uint64 `json:"reloads_ok"`
	ReloadsFailed uint64 `json:"reloads_failed"`
	LastError     string `json:"last_reload_error"`
}

func getConfigDump(t testing.TB, admin string) configDump {
	t.Helper()
	code, body := adminGet(t, admin, "/config_dump")
	var d configDump
	if err := json.Unmarshal([]byte(body), &d); code != 200 || err != nil {
		t.Fatalf("/config_dump: %d %v\n%s", code, err, body)
	}
	return d
}

// reloadGen is generation i of the reload test's config: the stable
// cluster never changes; the churn cluster's limits change every time (no
// rebuild) and its lb policy every fifth time (a rebuild, with streams in
// flight on it); route gen-i and cluster gen-i exist only in generation i.
func reloadGen(i int, stable, churn, pool []*backend.Backend) string {
	lb := "round_robin"
	if (i/5)%2 == 1 {
		lb = "least_request"
	}
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 30s
routes:
  - name: gen-%[1]d
    match: {prefix: /, headers: [{name: x-gen, exact: "%[1]d"}]}
    cluster: gen-%[1]d
    timeout: %[2]ds
  - name: churn
    match: {prefix: /, headers: [{name: x-churn, present: true}]}
    cluster: churn
  - name: all
    match: {prefix: /}
    cluster: stable
clusters:
  - name: stable
    endpoints: %[3]s
  - name: churn
    endpoints: %[4]s
    lb: %[5]s
    max_requests: %[6]d
  - name: gen-%[1]d
    endpoints: [%[7]s]
`, i, 10+i, addrs(stable), addrs(churn), lb, 1000+i, pool[i%len(pool)].Addr)
}

// TestReloadUnderLoad: 20 reloads that add and remove routes and clusters,
// rebuild a cluster with streams in flight and change limits, under
// continuous unary and streaming load: not one call may fail.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	stable := startBackends(t, "stable", 2)
	churn := startBackends(t, "churn", 2)
	pool := startBackends(t, "pool", 4)
	m := startMesh(t, reloadGen(0, stable, churn, pool))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)

	var (
		gen      atomic.Int64 // the generation in force
		ok, fail atomic.Int64
		viaGen   atomic.Int64 // calls answered through the current gen-i route
		streams  atomic.Int64 // streams completed
		errMu    sync.Mutex
		errs     []string
	)
	failed := func(what string, err error) {
		fail.Add(1)
		errMu.Lock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf("%s: %v", what, err))
		}
		errMu.Unlock()
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				g := gen.Load()
				var md metadata.MD
				switch (n + w) % 3 {
				case 0:
					md = metadata.Pairs("x-gen", fmt.Sprint(g))
				case 1:
					md = metadata.Pairs("x-churn", "1")
				}
				cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 10*time.Second)
				var hdr metadata.MD
				_, err := client.EmptyCall(cctx, &testpb.Empty{}, grpc.Header(&hdr))
				cancel()
				if err != nil {
					failed("unary", err)
					continue
				}
				ok.Add(1)
				if md.Get("x-gen") != nil && strings.Join(hdr.Get("x-backend"), "") == fmt.Sprintf("pool-%d", g%4) {
					viaGen.Add(1)
				}
			}
		}()
	}
	// Streams on the churn cluster live across reloads, including the
	// ones that rebuild it: they must finish on the cluster they started on.
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				sctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-churn", "1"), 30*time.Second)
				err := func() error {
					st, err := client.FullDuplexCall(sctx)
					if err != nil {
						return err
					}
					for j := 0; j < 40 && ctx.Err() == nil; j++ {
						if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 4}}}); err != nil {
							return err
						}
						if _, err := st.Recv(); err != nil {
							return err
						}
						pause := time.NewTimer(5 * time.Millisecond) // pacing, not waiting for state
						<-pause.C
					}
					if err := st.CloseSend(); err != nil {
						return err
					}
					if _, err := st.Recv(); err != io.EOF {
						return fmt.Errorf("stream end: %w", err)
					}
					return nil
				}()
				cancel()
				if err != nil {
					failed("stream", err)
				} else {
					streams.Add(1)
				}
			}
		}()
	}

	start := time.Now()
	for i := 1; i <= 20; i++ {
		cfg, err := config.Parse([]byte(reloadGen(i, stable, churn, pool)), "gen.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if err := m.srv.Reload(cfg); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		gen.Store(int64(i))
		// Let traffic use generation i before the next reload.
		before := viaGen.Load()
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("calls through route gen-%d", i), func() bool { return viaGen.Load() >= before+5 })
	}
	took := time.Since(start)
	stop()
	wg.Wait()
	okN, failN := ok.Load(), fail.Load()
	t.Logf("20 reloads in %v under load: %d unary calls OK, %d streams completed, %d failed", took.Round(time.Millisecond), okN, streams.Load(), failN)
	if failN != 0 {
		t.Fatalf("%d calls failed across the reloads; first ones:\n%s", failN, strings.Join(errs, "\n"))
	}
	if streams.Load() == 0 || okN < 100 {
		t.Fatalf("too little load to mean anything: %d calls, %d streams", okN, streams.Load())
	}
	if okR, failR := m.srv.ReloadCounts(); okR != 20 || failR != 0 {
		t.Errorf("reload counts ok=%d failed=%d, want 20 and 0", okR, failR)
	}
}

// TestInvalidReloadRejected: a bad file is rejected with its errors
// visible on /config_dump and counted, and the old config keeps serving.
func TestInvalidReloadRejected(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "inv", 1)
	valid := simpleConfig(bs, "")
	m := startMesh(t, valid)
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	file := filepath.Join(t.TempDir(), "meshd.yaml")

	tests := []struct {
		name, content, wantErr string
	}{
		{"syntax", valid + "\n  - [unclosed\n", "meshd.yaml:"},
		{"unknown cluster", strings.Replace(valid, "cluster: backends", "cluster: nope", 1), `unknown cluster "nope"`},
		{"unknown key", strings.Replace(valid, "drain_timeout: 5s", "drain_timeot: 5s", 1), `unknown field "drain_timeot"`},
		{"listener change", strings.Replace(valid, "name: main", "name: other", 1), "listeners changed"},
	}
	for i, tc := range tests {
		if err := os.WriteFile(file, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := m.srv.ReloadFile(file)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Fatalf("%s: reload error %v, want one containing %q", tc.name, err, tc.wantErr)
		}
		d := getConfigDump(t, m.Admin)
		if d.ReloadsFailed != uint64(i+1) || !strings.Contains(d.LastError, tc.wantErr) {
			t.Fatalf("%s: /config_dump reloads_failed=%d last_reload_error=%q", tc.name, d.ReloadsFailed, d.LastError)
		}
		if _, err := client.EmptyCall(ctxMD(t), &testpb.Empty{}); err != nil {
			t.Fatalf("%s: the old config stopped serving: %v", tc.name, err)
		}
	}
	if err := os.WriteFile(file, []byte(valid), 0o600); err != nil {
		t.Fatal(err)
	}
	before := getConfigDump(t, m.Admin).ReloadsOK
	if err := m.srv.ReloadFile(file); err != nil {
		t.Fatal(err)
	}
	if d := getConfigDump(t, m.Admin); d.ReloadsOK != before+1 || d.LastError != "" {
		t.Fatalf("after a good reload: %+v", d)
	}
}

// TestReloadFromConsulKV: two meshd instances share routes and clusters
// through one Consul KV key; an edit reaches both within a second, and an
// invalid value is rejected by both while they keep their last good rules.
//
// The instances are two server.Server values in this process, each with
// its own listener, admin port, clusters and KV watch: the KV path lives
// entirely in package server (the binary only adds flags and signals, and
// its file reloads are tested in TestReloadBinaryFileWatch), and in process
// the race detector watches it.
func TestReloadFromConsulKV(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	local := startBackends(t, "local", 1)
	kvA := startBackends(t, "kv-a", 1)
	kvB := startBackends(t, "kv-b", 1)
	const key = "meshd/routes"
	file := fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
consul: {address: %s, config_key: %s}
routes:
  - name: fallback
    match: {prefix: /}
    cluster: local
clusters:
  - name: local
    endpoints: %s
`, agent.Addr, key, addrs(local))
	shared := func(cluster string, b *backend.Backend) []byte {
		return []byte(fmt.Sprintf(`routes:
  - name: test-service
    match: {service: grpc.testing.TestService}
    cluster: %[1]s
clusters:
  - name: %[1]s
    endpoints: [%[2]s]
`, cluster, b.Addr))
	}
	var meshes []*mesh
	var clients []testpb.TestServiceClient
	for range 2 {
		m := startMesh(t, file)
		cc := dial(t, m.Addr)
		waitServing(t, cc)
		meshes = append(meshes, m)
		clients = append(clients, testpb.NewTestServiceClient(cc))
	}
	answeredBy := func(c testpb.TestServiceClient) string {
		resp, err := c.UnaryCall(ctxMD(t), &testpb.SimpleRequest{})
		if err != nil {
			return "error: " + err.Error()
		}
		return resp.GetServerId()
	}
	for i, c := range clients {
		if got := answeredBy(c); got != "local-0" {
			t.Fatalf("instance %d before the key exists: answered by %s", i, got)
		}
	}
	kv := agent.Client.KV()
	put := func(value []byte) time.Time {
		t.Helper()
		if _, err := kv.Put(&api.KVPair{Key: key, Value: value}, nil); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	// waitAll waits until every instance answers from want; it returns
	// the slowest instance's propagation time.
	waitAll := func(since time.Time, want string) time.Duration {
		t.Helper()
		var slowest time.Duration
		for i, c := range clients {
			testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("instance %d to route to %s", i, want), func() bool { return answeredBy(c) == want })
			slowest = max(slowest, time.Since(since))
		}
		return slowest
	}

	d1 := waitAll(put(shared("kv", kvA[0])), "kv-a-0")
	d2 := waitAll(put(shared("kv2", kvB[0])), "kv-b-0")
	t.Logf("edits reached both instances in %v and %v", d1.Round(time.Millisecond), d2.Round(time.Millisecond))
	if d1 > time.Second || d2 > time.Second {
		t.Errorf("an edit took more than a second to reach every instance: %v, %v", d1, d2)
	}

	// An invalid value: both reject it, count it, say why, and keep
	// serving the last good rules.
	failedBefore := make([]uint64, len(meshes))
	for i, m := range meshes {
		_, failedBefore[i] = m.srv.ReloadCounts()
	}
	put([]byte("routes:\n  - name: broken\n    match: {prefix: /}\n    cluster: missing\n"))
	for i, m := range meshes {
		testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("instance %d to reject the value", i), func() bool {
			_, failed := m.srv.ReloadCounts()
			return failed == failedBefore[i]+1
		})
		d := getConfigDump(t, m.Admin)
		if !strings.Contains(d.LastError, "consul:meshd/routes:4: routes[0].cluster") || !strings.Contains(d.LastError, `unknown cluster "missing"`) {
			t.Errorf("instance %d: last_reload_error %q does not point at the key's line", i, d.LastError)
		}
		if got := answeredBy(clients[i]); got != "kv-b-0" {
			t.Errorf("instance %d after the invalid value: answered by %s, want the last good kv-b-0", i, got)
		}
	}
	// A deleted key keeps the last good rules too.
	if _, err := kv.Delete(key, nil); err != nil {
		t.Fatal(err)
	}
	// A good value after that is applied again.
	waitAll(put(shared("kv", kvA[0])), "kv-a-0")
}

// TestReloadBinaryFileWatch runs the real binary on a Kubernetes
// ConfigMap-style directory (meshd.yaml → ..data/meshd.yaml, ..data a
// symlink swapped atomically) with polling off: the directory watch alone
// must see each swap; SIGHUP reloads too; a bad file is rejected and
// reported on /config_dump.
func TestReloadBinaryFileWatch(t *testing.T) {
	t.Parallel()
	a := startBackends(t, "fa", 1)
	b := startBackends(t, "fb", 1)
	dir := t.TempDir()
	version := 0
	// publish writes content as a new ConfigMap version and swaps ..data to it.
	publish := func(content string) {
		t.Helper()
		version++
		vdir := fmt.Sprintf("..v%d", version)
		if err := os.Mkdir(filepath.Join(dir, vdir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, vdir, "meshd.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(vdir, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	cfgFor := func(bs []*backend.Backend) string { return simpleConfig(bs, "") }
	publish(cfgFor(a))
	if err := os.Symlink(filepath.Join("..data", "meshd.yaml"), filepath.Join(dir, "meshd.yaml")); err != nil {
		t.Fatal(err)
	}
	bin := buildMeshd(t)
	p := startBinary(t, bin, filepath.Join(dir, "meshd.yaml"), "-watch-interval", "0")
	cc := dial(t, p.addr)
	waitServing(t, cc)
	client := testpb.NewTestServiceClient(cc)
	answeredBy := func() string {
		resp, err := client.UnaryCall(ctxMD(t), &testpb.SimpleRequest{})
		if err != nil {
			return "error: " + err.Error()
		}
		return resp.GetServerId()
	}
	if got := answeredBy(); got != "fa-0" {
		t.Fatalf("answered by %s", got)
	}
	start := time.Now()
	publish(cfgFor(b))
	// A reload warms the new cluster (up to 5s) before the swap: a busy
	// machine can spend all of it.
	testkit.WaitFor(t, 15*time.Second, "the ConfigMap swap to be applied", func() bool { return answeredBy() == "fb-0" })
	t.Logf("ConfigMap-style swap applied %v after it was made (polling off)", time.Since(start).Round(time.Millisecond))

	base := getConfigDump(t, p.admin)
	publish("listeners: [oops\n")
	testkit.WaitFor(t, 5*time.Second, "the bad file to be rejected", func() bool {
		return getConfigDump(t, p.admin).ReloadsFailed == base.ReloadsFailed+1
	})
	if d := getConfigDump(t, p.admin); !strings.Contains(d.LastError, "meshd.yaml") {
		t.Errorf("last_reload_error %q does not name the file", d.LastError)
	}
	if got := answeredBy(); got != "fb-0" {
		t.Fatalf("after the bad file: answered by %s, want the old config's fb-0", got)
	}
	publish(cfgFor(a))
	testkit.WaitFor(t, 5*time.Second, "the fixed file to be applied", func() bool { return answeredBy() == "fa-0" })
	okBefore := getConfigDump(t, p.admin).ReloadsOK
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "SIGHUP to reload", func() bool { return getConfigDump(t, p.admin).ReloadsOK == okBefore+1 })
}
