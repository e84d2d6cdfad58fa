package policy

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFaultDecide(t *testing.T) {
	t.Parallel()
	both := (&Route{Name: "users", Fault: &Fault{Delay: 100 * time.Millisecond, DelayPercent: 5,
		AbortCode: codes.Unavailable, AbortPercent: 1}}).Init().Fault
	gated := (&Route{Name: "drill", Fault: &Fault{AbortCode: codes.Internal, AbortPercent: 100, Header: "x-fault-drill"}}).Init().Fault
	delayOnly := (&Route{Name: "slow", Fault: &Fault{Delay: time.Second, DelayPercent: 100}}).Init().Fault
	cases := []struct {
		name              string
		f                 *Fault
		header            bool
		delayRoll, abortR float64
		kind              FaultKind
		delay             time.Duration
		code              codes.Code
	}{
		{"no fault", nil, true, 0, 0, FaultNone, 0, codes.OK},
		{"abort under its percent", both, false, 50, 0.99, FaultAbort, 0, codes.Unavailable},
		{"abort wins over delay", both, false, 0, 0, FaultAbort, 0, codes.Unavailable},
		{"abort at its percent: not", both, false, 50, 1, FaultNone, 0, codes.OK},
		{"delay under its percent", both, false, 4.99, 50, FaultDelay, 100 * time.Millisecond, codes.OK},
		{"delay at its percent: not", both, false, 5, 50, FaultNone, 0, codes.OK},
		{"gated, header absent", gated, false, 0, 0, FaultNone, 0, codes.OK},
		{"gated, header present", gated, true, 99, 99.99, FaultAbort, 0, codes.Internal},
		{"100% delay", delayOnly, false, 99.99, 0, FaultDelay, time.Second, codes.OK},
		{"0% abort never", delayOnly, false, 99.99, 0, FaultDelay, time.Second, codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kind, d, err := tc.f.Decide(tc.header, tc.delayRoll, tc.abortR)
			if kind != tc.kind || d != tc.delay || status.Code(err) != tc.code {
				t.Fatalf("Decide = %q %v %v, want %q %v %v", kind, d, err, tc.kind, tc.delay, tc.code)
			}
		})
	}
	if _, _, err := both.Decide(false, 99, 0); status.Convert(err).Message() != "meshd: fault injected by route users" {
		t.Fatalf("abort message %q, want it to name the route and say injected", status.Convert(err).Message())
	}
}

func TestMirrorSample(t *testing.T) {
	t.Parallel()
	var none *Mirror
	m := &Mirror{Cluster: "shadow", Percent: 10}
	for _, tc := range []struct {
		m    *Mirror
		roll float64
		want bool
	}{{none, 0, false}, {m, 0, true}, {m, 9.999, true}, {m, 10, false}, {&Mirror{Percent: 100}, 99.999, true}, {&Mirror{}, 0, false}} {
		if got := tc.m.Sample(tc.roll); got != tc.want {
			t.Errorf("%+v.Sample(%v) = %v, want %v", tc.m, tc.roll, got, tc.want)
		}
	}
}
