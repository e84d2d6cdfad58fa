package engine

import (
	"slices"
	"testing"
	"time"

	"golang.org/x/net/http2"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// TestDeadlineOrder: calls' deadlines fire in deadline order whatever order
// the calls start in. The Server's one deadline timer is armed for the
// earliest deadline, so a call that starts later with an earlier deadline
// must re-arm it: the first call's deadline is a minute away, and without
// the re-arm nothing would end before it. Calls against a black hole are
// ended by meshd's deadline alone (the raw client enforces none), and the
// order of their final HEADERS is the order the queue fired them.
func TestDeadlineOrder(t *testing.T) {
	t.Parallel()
	hole := testkit.BlackHole(t).Addr()
	p := startProxy(t, hole, Config{DialTimeout: 3 * time.Second})
	rc := h2raw.New(t, p.addr)
	// Started in this order; deadlines 300 ms apart so scheduling noise
	// cannot reorder them.
	timeouts := []string{"60S", "700m", "100m", "1000m", "400m"}
	byDeadline := map[string]int{"100m": 0, "400m": 1, "700m": 2, "1000m": 3}
	streamTimeout := map[uint32]string{}
	for _, to := range timeouts {
		id := rc.NewStream()
		streamTimeout[id] = to
		rc.Headers(id, h2raw.Request("/grpc.testing.TestService/UnaryCall", "grpc-timeout", to), false)
		if err := rc.Write(func(fr *http2.Framer) error {
			return fr.WriteData(id, true, h2raw.MarshalMessage(t, &testpb.SimpleRequest{}))
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for len(got) < len(byDeadline) {
		f := rc.Next("a call's final HEADERS", func(f http2.Frame) bool {
			h, ok := f.(*http2.MetaHeadersFrame)
			return ok && h.StreamEnded()
		})
		h := f.(*http2.MetaHeadersFrame)
		if st := h.PseudoValue("status"); st != "" && st != "200" {
			t.Fatalf("stream %d: :status %s", h.StreamID, st)
		}
		var code string
		for _, hf := range h.Fields {
			if hf.Name == "grpc-status" {
				code = hf.Value
			}
		}
		if code != "4" { // DEADLINE_EXCEEDED
			t.Errorf("stream %d (grpc-timeout %s): grpc-status %q, want 4", h.StreamID, streamTimeout[h.StreamID], code)
		}
		got = append(got, streamTimeout[h.StreamID])
	}
	if !slices.IsSortedFunc(got, func(a, b string) int { return byDeadline[a] - byDeadline[b] }) {
		t.Errorf("calls ended in the order %v, want deadline order", got)
	}
}

// TestDeadlineQueueEmpties: calls that end before their deadline leave the
// queue at once, so it does not hold ended calls until their deadlines.
func TestDeadlineQueueEmpties(t *testing.T) {
	t.Parallel()
	p, client := setup(t, &testBackend{}, Config{})
	for range 20 {
		ctx := ctxT(t, time.Minute) // a deadline far beyond the call
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	// The Result is reported as the call ends, after it left the queue.
	queued := func() int {
		q := &p.srv.sh.deadlines
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.h)
	}
	if !testkit.Poll(3*time.Second, 0, func() bool { return queued() == 0 }) {
		t.Errorf("%d calls left in the deadline queue after every call ended", queued())
	}
}
