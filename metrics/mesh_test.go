package metrics_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/callrecord"
	"github.com/meshd/meshd/metrics"
)

// TestAuthzDenied: denials are counted by source service, plaintext
// callers as unauthenticated, sources past the cap as other; a backend's
// own PERMISSION_DENIED is not a denial.
func TestAuthzDenied(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	deny := func(peer string) callrecord.Call {
		return callrecord.Call{Method: "/a.B/C", Code: codes.PermissionDenied, Peer: peer, Denied: true}
	}
	observe(m, deny("spiffe://td.consul/ns/default/dc/dc1/svc/web"))
	observe(m, deny("spiffe://td.consul/ns/default/dc/dc1/svc/web"))
	observe(m, deny(""))
	observe(m, callrecord.Call{Method: "/a.B/C", Route: "r", Cluster: "c", Code: codes.PermissionDenied, Peer: "spiffe://td.consul/ns/default/dc/dc1/svc/billing"})
	for i := range 250 {
		observe(m, deny(fmt.Sprintf("spiffe://td.consul/ns/default/dc/dc1/svc/s%d", i)))
	}
	got := scrape(t, m)
	if v := got.Value(t, "meshd_authz_denied_total", map[string]string{"source": "web"}); v != 2 {
		t.Errorf("web denials = %v, want 2", v)
	}
	if v := got.Value(t, "meshd_authz_denied_total", map[string]string{"source": metrics.Unauthenticated}); v != 1 {
		t.Errorf("unauthenticated denials = %v, want 1", v)
	}
	if s := got.Series("meshd_authz_denied_total", map[string]string{"source": "billing"}); len(s) != 0 {
		t.Errorf("a backend's PERMISSION_DENIED was counted as a denial: %v", s)
	}
	// 2 sources above, then 198 of the 250 get their own series.
	if v := got.Value(t, "meshd_authz_denied_total", map[string]string{"source": metrics.Other}); v != 52 {
		t.Errorf("other denials = %v, want 52", v)
	}
	if n := len(got.Series("meshd_authz_denied_total", nil)); n != 201 {
		t.Errorf("%d denial series, want 201 (200 sources and other)", n)
	}
}

type meshSource struct{ source }

func (meshSource) MeshState() (metrics.MeshState, bool) {
	return metrics.MeshState{Service: "web", Ready: true, LeafNotAfter: time.Unix(1900000000, 0), Roots: 2,
		HandshakeFailures: map[string]uint64{"inbound": 3}, OpaqueDenied: map[string]uint64{"inbound": 2}}, true
}

func TestMeshStateMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.SetSource(meshSource{})
	got := scrape(t, m)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshd_mesh_identity_ready", map[string]string{"service": "web"}, 1},
		{"meshd_mesh_leaf_expiry_timestamp_seconds", map[string]string{"service": "web"}, 1900000000},
		{"meshd_mesh_roots", map[string]string{"service": "web"}, 2},
		{"meshd_mesh_handshake_failures_total", map[string]string{"listener": "inbound"}, 3},
		{"meshd_authz_denied_connections_total", map[string]string{"listener": "inbound"}, 2},
	} {
		if v := got.Value(t, c.name, c.labels); v != c.want {
			t.Errorf("%s = %v, want %v", c.name, v, c.want)
		}
	}
}
