package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/admin"
	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/tap"
)

// openTap starts GET /tap with query and returns its lines, once the
// Hub has the subscription (so calls observed from then on are seen).
func openTap(t *testing.T, ctx context.Context, a *admin.Server, hub *tap.Hub, query string) (*http.Response, *bufio.Scanner) {
	t.Helper()
	before := hub.Tappers()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a.Addr()+"/tap"+query, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("GET /tap%s: %s", query, resp.Status)
	}
	testkit.WaitFor(t, 5*time.Second, "the tap subscription", func() bool { return hub.Tappers() > before })
	return resp, bufio.NewScanner(resp.Body)
}

// TestTapStream: /tap sends one JSON line per matching call, stops after
// limit lines, and refuses bad parameters.
func TestTapStream(t *testing.T) {
	t.Parallel()
	hub := &tap.Hub{}
	a := startAdmin(t, &source{}, admin.WithTap(hub))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, sc := openTap(t, ctx, a, hub, "?route=users&code=UNAVAILABLE&limit=2")
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	now := time.Now()
	for i, c := range []callrecord.Call{
		{Route: "users", Method: "/u.Users/Get", Code: codes.OK},
		{Route: "other", Method: "/u.Users/Get", Code: codes.Unavailable},
		{Route: "users", Method: "/u.Users/Get", Code: codes.Unavailable, Endpoint: "10.0.0.1:9000", Attempts: 2, Peer: "spiffe://dc1/ns/default/dc/dc1/svc/web"},
		{Route: "users", Method: "/u.Users/List", Code: codes.Unavailable},
		{Route: "users", Method: "/u.Users/Put", Code: codes.Unavailable},
	} {
		c.Start, c.Duration = now.Add(time.Duration(i)*time.Second), 1500*time.Microsecond
		hub.ObserveCall(&c)
	}
	var got []tap.Event
	for sc.Scan() {
		var e tap.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if len(got) != 2 {
		t.Fatalf("got %d lines, want 2 (limit): %+v", len(got), got)
	}
	if e := got[0]; e.Method != "/u.Users/Get" || e.Status != "UNAVAILABLE" || e.Endpoint != "10.0.0.1:9000" || e.Attempts != 2 ||
		e.Peer == "" || time.Duration(e.Latency) != 1500*time.Microsecond || e.Protocol != "grpc" {
		t.Errorf("first line %+v", e)
	}
	if got[1].Method != "/u.Users/List" {
		t.Errorf("second line %+v", got[1])
	}
	testkit.WaitFor(t, 5*time.Second, "the subscription to end", func() bool { return hub.Tappers() == 0 })

	for _, q := range []string{"?code=NOPE", "?limit=x", "?rate=-1"} {
		if code, _, _ := get(t, a.Addr(), "/tap"+q); code != http.StatusBadRequest {
			t.Errorf("/tap%s: %d, want 400", q, code)
		}
	}
}

// TestTapShutdown: an open /tap stream does not hold up the admin
// server's shutdown, and a client that goes away ends its subscription.
func TestTapShutdown(t *testing.T) {
	t.Parallel()
	hub := &tap.Hub{}
	a, err := admin.Listen("127.0.0.1:0", &source{}, admin.WithTap(hub))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, sc1 := openTap(t, ctx, a, hub, "")
	cctx, ccancel := context.WithCancel(context.Background())
	openTap(t, cctx, a, hub, "")
	ccancel()
	testkit.WaitFor(t, 5*time.Second, "the cancelled tapper to go", func() bool { return hub.Tappers() == 1 })

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	start := time.Now()
	if err := a.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v with a tap open", d)
	}
	for sc1.Scan() {
		if !strings.Contains(sc1.Text(), "dropped") {
			t.Errorf("unexpected line %q", sc1.Text())
		}
	}
	if hub.Tappers() != 0 {
		t.Errorf("%d tappers after shutdown", hub.Tappers())
	}
}
