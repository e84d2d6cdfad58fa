package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/tap"
)

// TestTapThroughMeshd: GET /tap on a real meshd's admin port streams the
// calls that end through it, filtered by code, with the endpoint and the
// attempts of a retried call.
func TestTapThroughMeshd(t *testing.T) {
	t.Parallel()
	bs := startBackends(t, "tap", 1)
	m := startObserved(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
drain_timeout: 5s
routes:
  - name: flaky
    match: {prefix: /}
    cluster: backends
    retry: {attempts: 2, retry_on: [UNAVAILABLE]}
clusters: [{name: backends, endpoints: %s}]
`, addrs(bs)))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	bs[0].FailAll(codes.Unavailable)
	client := testpb.NewTestServiceClient(cc)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.Admin+"/tap?code=UNAVAILABLE&route=flaky&limit=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan []byte, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
	}()
	// The response's headers arrive once the subscription exists: calls
	// from here on are tapped.
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("EmptyCall: %v, want UNAVAILABLE", err)
	}
	var ev tap.Event
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("tap ended without a line")
		}
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		t.Logf("tap line: %s", l)
	case <-ctx.Done():
		t.Fatal("no tap line")
	}
	if ev.Route != "flaky" || ev.Cluster != "backends" || ev.Method != "/grpc.testing.TestService/EmptyCall" || ev.Status != "UNAVAILABLE" ||
		ev.Endpoint != bs[0].Addr || ev.Attempts != 2 || ev.Protocol != "grpc" || ev.Latency <= 0 {
		t.Errorf("event %+v", ev)
	}
	if _, ok := <-lines; ok {
		t.Error("more than limit=1 lines")
	}
}
