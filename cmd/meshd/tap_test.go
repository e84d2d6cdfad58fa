package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// TestTapCommand: `meshd tap` against a meshd built as `meshd run` builds
// it prints the calls that match its filter as table rows, and stops
// after -limit rows.
func TestTapCommand(t *testing.T) {
	t.Parallel()
	be, err := backend.Start("be")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Stop)
	be.SetServing(true)
	srv := startServer(t, writeConfig(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners: [{name: main, address: 127.0.0.1:0}]
routes:
  - {name: empty, match: {method: /grpc.testing.TestService/EmptyCall}, cluster: users}
  - {name: rest, match: {prefix: /}, cluster: users}
clusters: [{name: users, endpoints: [%s]}]
`, be.Addr)))
	conn, err := grpc.NewClient(srv.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)

	var out, errOut lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- cmdTap(ctx, []string{"-admin", srv.admin, "-route", "empty", "-limit", "2"}, &out, &errOut)
	}()
	// Calls keep going until the tap has printed two rows: the tap
	// subscribes some time after the command starts.
	testkit.WaitFor(t, 20*time.Second, "two tapped calls", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		if _, err := client.UnaryCall(cctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
		if _, err := client.EmptyCall(cctx, &testpb.Empty{}); err != nil {
			t.Fatalf("EmptyCall: %v", err)
		}
		return strings.Count(out.String(), "EmptyCall") >= 2
	})
	if err := <-done; err != nil {
		t.Fatalf("tap: %v\n%s", err, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("want a header and 2 rows:\n%s", out.String())
	}
	for _, l := range lines[1:] {
		for _, want := range []string{"empty", "/grpc.testing.TestService/EmptyCall", "OK", be.Addr, "grpc"} {
			if !strings.Contains(l, want) {
				t.Errorf("row %q lacks %q", l, want)
			}
		}
		if strings.Contains(l, "UnaryCall") {
			t.Errorf("row of another route: %q", l)
		}
	}
	t.Logf("meshd tap:\n%s", out.String())
}

func TestTapUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"tap"}, {"tap", "-admin", "127.0.0.1:1", "-code", "NOPE"}, {"tap", "-admin", "x", "extra"}} {
		if code, _, _ := runCmd(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := runCmd("tap", "-admin", "127.0.0.1:1"); code != 1 || !strings.Contains(errOut, "meshd tap") {
		t.Errorf("no meshd there: exit %d, %q", code, errOut)
	}
}
