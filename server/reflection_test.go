package server

import (
	"testing"

	"github.com/meshd/meshd/config"
)

func TestMatchesService(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		m    config.Match
		svc  string
		want bool
	}{
		{config.Match{Service: "a.B"}, "a.B", true},
		{config.Match{Service: "a.B"}, "a.C", false},
		{config.Match{Method: "/a.B/M"}, "a.B", true},
		{config.Match{Method: "/a.BC/M"}, "a.B", false},
		{config.Match{Prefix: "/"}, "a.B", true},
		{config.Match{Prefix: "/a."}, "a.B", true},
		{config.Match{Prefix: "/b."}, "a.B", false},
		{config.Match{Prefix: "/a.B/Get"}, "a.B", true},
	} {
		if got := matchesService(tc.m, tc.svc); got != tc.want {
			t.Errorf("%+v %s: %v", tc.m, tc.svc, got)
		}
	}
}
