package policy

import (
	"testing"

	"google.golang.org/grpc/codes"
)

func TestFatal(t *testing.T) {
	t.Parallel()
	r := &Retry{Attempts: 3, RetryOn: []codes.Code{codes.Unavailable, codes.ResourceExhausted}}
	for _, tc := range []struct {
		name string
		r    *Retry
		code codes.Code
		want bool
	}{
		{"retry_on status", r, codes.Unavailable, false},
		{"another retry_on status", r, codes.ResourceExhausted, false},
		{"status not retried", r, codes.InvalidArgument, true},
		{"OK answers the call", r, codes.OK, true},
		{"no retry policy", nil, codes.Unavailable, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Fatal(tc.r, tc.code); got != tc.want {
				t.Errorf("Fatal(%v) = %v, want %v", tc.code, got, tc.want)
			}
		})
	}
}
