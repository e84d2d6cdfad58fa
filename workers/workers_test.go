package workers

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testkit"
)

// TestDecider: Auto's decisions over runs of intervals, from the counts
// and thresholds in workers.go.
func TestDecider(t *testing.T) {
	t.Parallel()
	sat := func(cur int) load { return load{busy: float64(cur), idle: 1, hasIdle: true} }
	tests := []struct {
		name  string
		start int
		max   int
		loads []load
		want  []int // the count after each interval
	}{
		{"moderate load stays on one", 1, 4,
			[]load{{busy: 0.2, idle: 1.5, hasIdle: true}, {busy: 0.3, idle: 1.5, hasIdle: true}, {busy: 0.25, idle: 1.6, hasIdle: true}},
			[]int{1, 1, 1}},
		{"saturated with an idle CPU grows after two intervals", 1, 4,
			[]load{sat(1), sat(1), sat(2), sat(2)},
			[]int{1, 2, 2, 3}},
		{"one unsaturated interval restarts the count", 1, 4,
			[]load{sat(1), {busy: 0.5, idle: 1, hasIdle: true}, sat(1), sat(1)},
			[]int{1, 1, 1, 2}},
		{"saturated on a busy machine does not grow", 1, 2,
			[]load{{busy: 0.98, idle: 0.1, hasIdle: true}, {busy: 0.99, idle: 0.2, hasIdle: true}, {busy: 1, idle: 0, hasIdle: true}},
			[]int{1, 1, 1}},
		{"saturated without the machine's idle time grows", 1, 2,
			[]load{{busy: 0.95}, {busy: 0.95}},
			[]int{1, 2}},
		{"never above max", 2, 2,
			[]load{sat(2), sat(2), sat(2)},
			[]int{2, 2, 2}},
		{"a load that fits in one fewer shrinks after five intervals", 3, 4,
			[]load{{busy: 0.5}, {busy: 0.5}, {busy: 0.5}, {busy: 0.5}, {busy: 0.5}, {busy: 0.5}},
			[]int{3, 3, 3, 3, 2, 2}},
		{"never below one", 1, 4,
			[]load{{}, {}, {}, {}, {}, {}},
			[]int{1, 1, 1, 1, 1, 1}},
		{"a load between the thresholds holds", 2, 4,
			[]load{{busy: 1.2, idle: 1, hasIdle: true}, {busy: 1.2, idle: 1, hasIdle: true}, {busy: 1.2, idle: 1, hasIdle: true}, {busy: 1.2, idle: 1, hasIdle: true}, {busy: 1.2, idle: 1, hasIdle: true}, {busy: 1.2, idle: 1, hasIdle: true}},
			[]int{2, 2, 2, 2, 2, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var d decider
			cur := tc.start
			for i, l := range tc.loads {
				cur = d.next(cur, tc.max, l)
				if cur != tc.want[i] {
					t.Fatalf("after interval %d (%+v): %d workers, want %d (all: %v)", i+1, l, cur, tc.want[i], tc.want)
				}
			}
		})
	}
}

// script is a Controller's sampler and setter for TestController: each
// sample advances a clock by Interval and the process's CPU by the next
// busy value; every applied count is recorded.
type script struct {
	mu      sync.Mutex
	at      time.Time
	cpu     time.Duration
	idle    time.Duration
	busy    []float64 // CPUs used in each coming interval; the last repeats
	applied []int
}

func (s *script) sample() (Sample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() {
		s.at = time.Unix(1e9, 0)
		return Sample{At: s.at, Process: s.cpu, Idle: s.idle, HasIdle: true}, nil
	}
	b := s.busy[0]
	if len(s.busy) > 1 {
		s.busy = s.busy[1:]
	}
	s.at = s.at.Add(Interval)
	s.cpu += time.Duration(b * float64(Interval))
	s.idle += Interval // one CPU left idle
	return Sample{At: s.at, Process: s.cpu, Idle: s.idle, HasIdle: true}, nil
}

func (s *script) apply(n int) {
	s.mu.Lock()
	s.applied = append(s.applied, n)
	s.mu.Unlock()
}

func (s *script) last() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.applied) == 0 {
		return 0
	}
	return s.applied[len(s.applied)-1]
}

// TestController runs the loop on scripted samples: Auto starts with one
// worker and grows under saturation; a fixed count applies at once and
// holds whatever the load; Auto again adapts from the count in use.
func TestController(t *testing.T) {
	t.Parallel()
	s := &script{busy: []float64{1, 1, 1, 2, 2}}
	c := New(WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	c.max, c.sample, c.apply, c.interval = 4, s.sample, s.apply, 5*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wait := func(what string, want int) {
		t.Helper()
		if !testkit.Poll(10*time.Second, 0, func() bool { return s.last() == want }) {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("%s: workers %d, want %d (applied %v)", what, s.applied[len(s.applied)-1], want, s.applied)
		}
	}
	wait("auto at start", 1)
	wait("auto, saturated", 3)
	c.Set(2)
	wait("fixed", 2)
	c.Set(Auto)
	// busy stays 2 (the script's last value): saturated on two workers.
	wait("auto again, saturated on two", 3)
}

// TestReadSample reads this machine's counters: the process's CPU time
// grows with work done, and the idle time is read where /proc/stat is.
func TestReadSample(t *testing.T) {
	t.Parallel()
	a, err := ReadSample()
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for i := range 50_000_000 { // some CPU to account for
		x ^= i * i
	}
	_ = x
	b, err := ReadSample()
	if err != nil {
		t.Fatal(err)
	}
	if b.Process <= a.Process {
		t.Errorf("process CPU %v then %v after a busy loop", a.Process, b.Process)
	}
	if b.HasIdle && b.Idle < a.Idle {
		t.Errorf("machine idle went back: %v then %v", a.Idle, b.Idle)
	}
}
