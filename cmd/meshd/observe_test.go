package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/otlptest"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// TestTelemetryWiring runs meshd as `meshd run` builds it from a config
// with every observability section set, and checks that each piece is
// connected: spans reach the collector, /metrics counts the call, the admin
// port answers gRPC health, and the access log has the call's line after
// the telemetry is closed.
func TestTelemetryWiring(t *testing.T) {
	t.Parallel()
	recv := otlptest.Start(t)
	be, err := backend.Start("be")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Stop)
	be.SetServing(true)
	logFile := filepath.Join(t.TempDir(), "access.log")
	file := writeConfig(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - name: all
    match: {prefix: /}
    cluster: users
clusters:
  - name: users
    endpoints: [%s]
tracing: {otlp_endpoint: %s, sample_ratio: 1.0}
metrics: {max_methods: 10}
access_log: {enabled: true, path: %s}
`, be.Addr, recv.Addr, logFile))

	code, out, errOut := runCmd("validate", "-config", file)
	if code != 0 {
		t.Fatalf("validate: exit %d\n%s%s", code, out, errOut)
	}
	srv := startServer(t, file)
	adminAddr := srv.admin

	cc, err := grpc.NewClient(srv.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	testkit.WaitFor(t, 10*time.Second, "a call to succeed", func() bool {
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		return err == nil
	})

	spans := recv.WaitSpans(t, 2, 10*time.Second)
	kinds := map[tracepb.Span_SpanKind]int{}
	for _, s := range spans {
		kinds[s.GetKind()]++
	}
	if kinds[tracepb.Span_SPAN_KIND_SERVER] == 0 || kinds[tracepb.Span_SPAN_KIND_CLIENT] == 0 {
		t.Errorf("spans by kind %v, want SERVER and CLIENT", kinds)
	}

	mfs := testkit.Scrape(t, nil, "http://"+adminAddr+"/metrics")
	var ok float64
	for _, m := range mfs["grpc_server_handled_total"].GetMetric() {
		ok += m.GetCounter().GetValue()
	}
	if ok < 1 {
		t.Errorf("grpc_server_handled_total sums to %v, want the calls made", ok)
	}
	for _, fam := range []string{"meshd_tracing_dropped_spans_total", "meshd_access_log_dropped_total", "meshd_endpoint_state", "meshd_config_reloads_total"} {
		if _, found := mfs[fam]; !found {
			t.Errorf("%s missing from /metrics", fam)
		}
	}

	hcc, err := grpc.NewClient(adminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hcc.Close()
	hr, err := healthpb.NewHealthClient(hcc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("admin gRPC health: %v %v, want SERVING", hr, err)
	}

	// Stopping meshd closes the telemetry, which writes the queued lines.
	srv.stop(t)
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("access log line is not JSON: %v\n%s", err, data)
	}
	if last["method"] != "/grpc.testing.TestService/UnaryCall" || last["code"] != "OK" || len(last["trace_id"].(string)) != 32 {
		t.Errorf("access log line %v: want the UnaryCall, OK, with a trace id", last)
	}
}

// TestTelemetryBadConfig: an access log that cannot be opened stops meshd
// at start with the reason.
func TestTelemetryBadConfig(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, fmt.Sprintf(`
listeners: [{name: main, address: 127.0.0.1:0}]
routes: [{name: all, match: {prefix: /}, cluster: c}]
clusters: [{name: c, endpoints: [127.0.0.1:1]}]
access_log: {enabled: true, path: %s}
`, filepath.Join(t.TempDir(), "no-such-dir", "access.log")))
	code, _, errOut := runCmd("run", "-config", file)
	if code != 1 || !strings.Contains(errOut, "accesslog") {
		t.Errorf("run with an unopenable access log: exit %d, stderr %q; want 1 naming the access log", code, errOut)
	}
}

// TestValidateTelemetrySections: the new sections are checked like every
// other, each error with its file, line and field.
func TestValidateTelemetrySections(t *testing.T) {
	t.Parallel()
	file := writeConfig(t, `listeners: [{name: main, address: 127.0.0.1:0}]
routes: [{name: all, match: {prefix: /}, cluster: c}]
clusters: [{name: c, endpoints: [127.0.0.1:1]}]
metrics: {max_methods: -1}
access_log: {enabled: true, sample_ratio: 1.5}
`)
	code, out, errOut := runCmd("validate", "-config", file)
	if code != 1 {
		t.Fatalf("validate: exit %d, want 1\n%s%s", code, out, errOut)
	}
	all := out + errOut
	for _, want := range []string{":4: metrics.max_methods: must not be negative", ":5: access_log.sample_ratio: must be between 0 and 1"} {
		if !strings.Contains(all, want) {
			t.Errorf("validate output lacks %q:\n%s", want, all)
		}
	}
}
