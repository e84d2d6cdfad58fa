package balancer

import (
	"github.com/meshd/meshd/internal/testkit"

	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/discovery"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestInPanic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		serving, judged, threshold int
		want                       bool
	}{
		{1, 3, 50, true},  // 33% < 50%
		{1, 2, 50, false}, // 50% is not below 50%
		{2, 3, 50, false},
		{0, 3, 50, true},
		{0, 0, 50, false}, // no verdict yet: not a panic
		{1, 3, 0, false},  // off
		{0, 3, 0, false},
		{9, 10, 100, true}, // 100: panic unless every endpoint serves
		{10, 10, 100, false},
		{1, 100, 1, false}, // 1% is not below 1%
		{0, 100, 1, true},
	}
	for _, tt := range tests {
		if got := inPanic(tt.serving, tt.judged, tt.threshold); got != tt.want {
			t.Errorf("inPanic(%d serving of %d, %d%%) = %v, want %v", tt.serving, tt.judged, tt.threshold, got, tt.want)
		}
	}
}

// TestPickSet covers panic mode and all_down on bare endpoints: which
// endpoints the picker gets for each mix of classes.
func TestPickSet(t *testing.T) {
	t.Parallel()
	// Endpoint kinds, by letter: S serving, N answered NOT_SERVING,
	// O ejected by outlier detection (health serving), U unreachable,
	// P pending (no verdict yet).
	mk := func(kinds string) []*Endpoint {
		eps := bareEndpoints(make([]uint32, len(kinds))...)
		for i, k := range kinds {
			e := eps[i]
			switch k {
			case 'S':
				e.health = healthServing
			case 'N':
				e.health = healthNotServing
			case 'O':
				e.health = healthServing
				e.ejectedUntil = time.Unix(1<<40, 0)
			case 'U':
				e.health, e.healthUnreachable = healthNotServing, true
			case 'P':
			}
		}
		return eps
	}
	tests := []struct {
		kinds      string
		threshold  int
		allDownAny bool
		want       string // the kinds picked, in order
		wantPanic  bool
	}{
		{"SSS", 50, false, "SSS", false},
		{"SNN", 0, false, "S", false},
		{"SNN", 50, false, "SNN", true},
		{"SNN", 30, false, "S", false}, // 33% is not below 30%
		{"SON", 50, false, "SON", true},
		{"SSN", 50, false, "SS", false},
		// Unreachable endpoints count against the share but take no calls.
		{"SUU", 50, false, "S", true},
		{"SUN", 50, false, "SN", true},
		// Pending endpoints count for nothing: one serving of one judged.
		{"SPP", 50, false, "S", false},
		{"PPP", 50, false, "", false},
		{"PPP", 50, true, "PPP", false},
		// Nothing serving: panic spreads over the answered ones; all_down
		// only when that is empty too.
		{"NNN", 50, false, "NNN", true},
		{"NNN", 0, false, "", false},
		{"NNN", 0, true, "NNN", false},
		{"UUN", 50, false, "N", true},
		{"UUP", 50, false, "", true},
		{"UUP", 50, true, "UUP", true},
		{"", 50, true, "", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d%%/any=%v", tt.kinds, tt.threshold, tt.allDownAny), func(t *testing.T) {
			t.Parallel()
			eps := mk(tt.kinds)
			got, panicking := pickSet(eps, tt.threshold, tt.allDownAny)
			var kinds strings.Builder
			for _, e := range got {
				for i, x := range eps {
					if x == e {
						kinds.WriteByte(tt.kinds[i])
					}
				}
			}
			if kinds.String() != tt.want || panicking != tt.wantPanic {
				t.Fatalf("pickSet = %q panic=%v, want %q panic=%v", kinds.String(), panicking, tt.want, tt.wantPanic)
			}
		})
	}
}

// TestClusterPanic runs panic mode against real backends: one of three
// serving, two answering NOT_SERVING. At 50% the calls spread over all
// three; at 0 only the serving one gets them. Stopped backends are left
// out even in panic mode.
func TestClusterPanic(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		threshold int
		wantAll   bool
	}{{50, true}, {0, false}} {
		t.Run(fmt.Sprintf("threshold %d", tt.threshold), func(t *testing.T) {
			t.Parallel()
			bs := []*backend{startBackend(t, nil), startBackend(t, nil), startBackend(t, nil)}
			opts := liveOptions("users")
			opts.HealthyPanicThreshold = tt.threshold
			c := newTestCluster(t, opts)
			c.Update([]discovery.Endpoint{bs[0].endpoint(), bs[1].endpoint(), bs[2].endpoint()})
			for _, b := range bs {
				waitState(t, c, b.addr, StateServing)
			}
			bs[1].set(healthpb.HealthCheckResponse_NOT_SERVING)
			bs[2].set(healthpb.HealthCheckResponse_NOT_SERVING)
			waitState(t, c, bs[1].addr, StateEjected)
			waitState(t, c, bs[2].addr, StateEjected)

			counts := map[string]int{}
			for range 300 {
				e, err := pickOnce(t, c)
				if err != nil {
					t.Fatalf("Pick: %v", err)
				}
				counts[e.ID()]++
			}
			st := c.Status()
			t.Logf("picks %v, status panic=%v entered=%d picks=%d", counts, st.Panic, st.PanicEntered, st.PanicPicks)
			if tt.wantAll {
				for _, b := range bs {
					if counts[b.addr] < 50 {
						t.Errorf("%s got %d of 300 picks in panic mode, want about a third", b.addr, counts[b.addr])
					}
				}
				if !st.Panic || st.PanicEntered != 1 || st.PanicPicks != 300 || st.HealthyPanicThreshold != 50 {
					t.Errorf("status panic=%v entered=%d picks=%d threshold=%d, want true 1 300 50", st.Panic, st.PanicEntered, st.PanicPicks, st.HealthyPanicThreshold)
				}
			} else {
				if counts[bs[0].addr] != 300 {
					t.Errorf("picks %v, want all 300 on the serving %s", counts, bs[0].addr)
				}
				if st.Panic || st.PanicPicks != 0 {
					t.Errorf("status panic=%v picks=%d with panic mode off", st.Panic, st.PanicPicks)
				}
			}

			// Stopped backends: unreachable, so even panic mode keeps
			// them out, and the cluster leaves panic when the others serve.
			bs[1].srv.Stop()
			bs[2].srv.Stop()
			testkit.WaitFor(t, 5*time.Second, "stopped backends unreachable", func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.eps[bs[1].addr].class() == classUnreachable && c.eps[bs[2].addr].class() == classUnreachable
			})
			for range 50 {
				e, err := pickOnce(t, c)
				if err != nil {
					t.Fatalf("Pick: %v", err)
				}
				if e.ID() != bs[0].addr {
					t.Fatalf("picked stopped backend %s (threshold %d)", e.ID(), tt.threshold)
				}
			}
			bs[0].srv.Stop()
			waitState(t, c, bs[0].addr, StateEjected)
			if e, err := c.Pick(nil); !errors.Is(err, ErrNoEndpoint) {
				t.Fatalf("Pick with every backend stopped = %v, %v; want ErrNoEndpoint", e, err)
			}
		})
	}
}
