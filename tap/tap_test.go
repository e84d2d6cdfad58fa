package tap_test

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/tap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func call(route, method string, code codes.Code, at time.Duration) *callrecord.Call {
	return &callrecord.Call{Route: route, Cluster: "c-" + route, Method: method, Code: code, Endpoint: "127.0.0.1:9",
		Start: t0.Add(at), Duration: 3 * time.Millisecond, Attempts: 1, BytesIn: 5, BytesOut: 7, Peer: "spiffe://x/ns/default/sa/web"}
}

func drain(s *tap.Subscription) []tap.Event {
	var out []tap.Event
	for {
		select {
		case e := <-s.Events():
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	unavailable := codes.Unavailable
	tests := []struct {
		name string
		f    tap.Filter
		want []string // methods seen
	}{
		{"all", tap.Filter{}, []string{"/a.A/X", "/a.A/Y", "/b.B/X"}},
		{"route", tap.Filter{Route: "b"}, []string{"/b.B/X"}},
		{"method", tap.Filter{Method: "/a.A/Y"}, []string{"/a.A/Y"}},
		{"service", tap.Filter{Method: "a.A"}, []string{"/a.A/X", "/a.A/Y"}},
		{"code", tap.Filter{Code: &unavailable}, []string{"/a.A/Y"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var h tap.Hub
			s, err := h.Subscribe(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			h.ObserveCall(call("a", "/a.A/X", codes.OK, 0))
			h.ObserveCall(call("a", "/a.A/Y", codes.Unavailable, time.Second))
			h.ObserveCall(call("b", "/b.B/X", codes.OK, 2*time.Second))
			var got []string
			for _, e := range drain(s) {
				got = append(got, e.Method)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestEventFields(t *testing.T) {
	t.Parallel()
	var h tap.Hub
	s, _ := h.Subscribe(tap.Filter{})
	defer s.Close()
	c := call("r", "/a.A/X", codes.DeadlineExceeded, 0)
	c.Protocol = "grpc-web"
	h.ObserveCall(c)
	ev := drain(s)
	if len(ev) != 1 {
		t.Fatalf("got %d events", len(ev))
	}
	e := ev[0]
	if e.Status != "DEADLINE_EXCEEDED" || e.Route != "r" || e.Cluster != "c-r" || e.Endpoint != "127.0.0.1:9" || e.Attempts != 1 ||
		e.Peer != c.Peer || e.BytesIn != 5 || e.BytesOut != 7 || e.Protocol != "grpc-web" ||
		time.Duration(e.Latency) != 3*time.Millisecond || !e.Time.Equal(t0.Add(3*time.Millisecond)) {
		t.Errorf("event %+v", e)
	}
}

// TestRateAndBuffer: calls past the rate cap are skipped (not counted as
// drops); calls past a full buffer are dropped and counted; the data path
// never blocks.
func TestRateAndBuffer(t *testing.T) {
	t.Parallel()
	var h tap.Hub
	slow, _ := h.Subscribe(tap.Filter{Rate: 10}) // one per 100ms
	defer slow.Close()
	for i := range 100 { // 10ms apart: 1s of calls
		h.ObserveCall(call("a", "/a.A/X", codes.OK, time.Duration(i)*10*time.Millisecond))
	}
	if got := len(drain(slow)); got != 10 {
		t.Errorf("rate 10/s over 1s: %d calls, want 10", got)
	}
	full, _ := h.Subscribe(tap.Filter{Rate: tap.MaxRate})
	defer full.Close()
	n := tap.Buffer + 50
	for i := range n { // 1ms apart: each admitted at 1000/s
		h.ObserveCall(call("a", "/a.A/X", codes.OK, 2*time.Second+time.Duration(i)*time.Millisecond))
	}
	if got, d := len(drain(full)), full.Dropped(); got != tap.Buffer || d != 50 {
		t.Errorf("full buffer: %d delivered, %d dropped; want %d, 50", got, d, tap.Buffer)
	}
}

func TestSubscribeBounds(t *testing.T) {
	t.Parallel()
	var h tap.Hub
	var subs []*tap.Subscription
	for range tap.MaxTappers {
		s, err := h.Subscribe(tap.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if _, err := h.Subscribe(tap.Filter{}); !errors.Is(err, tap.ErrTooMany) {
		t.Errorf("subscription %d: %v, want ErrTooMany", tap.MaxTappers+1, err)
	}
	for _, s := range subs {
		s.Close()
		s.Close() // idempotent
	}
	if n := h.Tappers(); n != 0 {
		t.Errorf("after Close: %d tappers", n)
	}
	h.ObserveCall(call("a", "/a.A/X", codes.OK, 0)) // nobody: a no-op
}

func TestParseCode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]codes.Code{"UNAVAILABLE": codes.Unavailable, "ok": codes.OK, "4": codes.DeadlineExceeded} {
		if got, err := tap.ParseCode(in); err != nil || got != want {
			t.Errorf("ParseCode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := tap.ParseCode("NOPE"); err == nil {
		t.Error("ParseCode(NOPE): no error")
	}
	if tap.CodeName(codes.Unauthenticated) != "UNAUTHENTICATED" || tap.CodeName(99) != "CODE(99)" {
		t.Error("CodeName")
	}
}

// BenchmarkObserveCall is the data path's cost of the tap: "none" is every
// call while nobody taps (one atomic load), "one" with one tapper taking
// every call, "filtered" with one tapper whose filter rejects the call.
func BenchmarkObserveCall(b *testing.B) {
	c := call("a", "/a.A/X", codes.OK, 0)
	b.Run("none", func(b *testing.B) {
		var h tap.Hub
		b.ReportAllocs()
		for b.Loop() {
			h.ObserveCall(c)
		}
	})
	b.Run("filtered", func(b *testing.B) {
		var h tap.Hub
		s, _ := h.Subscribe(tap.Filter{Route: "other"})
		defer s.Close()
		b.ReportAllocs()
		for b.Loop() {
			h.ObserveCall(c)
		}
	})
	b.Run("one", func(b *testing.B) {
		var h tap.Hub
		s, _ := h.Subscribe(tap.Filter{Rate: tap.MaxRate})
		defer s.Close()
		stop, done := make(chan struct{}), make(chan struct{})
		go func() { // a reader keeping up, as admin's /tap does
			defer close(done)
			for {
				select {
				case <-s.Events():
				case <-stop:
					return
				}
			}
		}()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			c.Start = t0.Add(time.Duration(i) * time.Millisecond) // every call within the rate
			h.ObserveCall(c)
		}
		close(stop)
		<-done
	})
}
