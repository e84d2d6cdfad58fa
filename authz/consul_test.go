package authz_test

import (
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/authz"
)

// TestFromConsul: order, precedence and L7 fields carry over; sources meshd
// cannot see are left out; unknown actions deny; a JWT requirement is
// marked unsupported.
func TestFromConsul(t *testing.T) {
	t.Parallel()
	ints := []*api.Intention{
		{ID: "id-1", SourceName: "web", DestinationName: "api", Action: api.IntentionActionAllow, Precedence: 9},
		{SourceName: "web", SourcePeer: "other-dc", DestinationName: "api", Action: api.IntentionActionAllow, Precedence: 9},
		{SourceName: "web", SourceNS: "team-a", DestinationName: "api", Action: api.IntentionActionAllow, Precedence: 9},
		{SourceName: "web", SourcePartition: "eu", DestinationName: "api", Action: api.IntentionActionAllow, Precedence: 9},
		{SourceName: "batch", SourceType: "external-uri", DestinationName: "api", Action: api.IntentionActionAllow, Precedence: 9},
		{SourceName: "mobile", SourceNS: "default", DestinationName: "api", Precedence: 9, Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{
				PathRegex: "/a.*", Methods: []string{"POST"},
				Header: []api.IntentionHTTPHeaderPermission{{Name: "x-a", Suffix: "z", Invert: true, IgnoreCase: true}},
			}},
			{Action: api.IntentionActionAllow, JWT: &api.IntentionJWTRequirement{Providers: []*api.IntentionJWTProvider{{Name: "okta"}}}},
			{Action: "maybe"},
		}},
		{SourceName: "legacy", DestinationName: "api", Action: "", Precedence: 9},
		{SourceName: "*", SourceNS: "*", DestinationName: "api", Action: api.IntentionActionDeny, Precedence: 7},
	}
	want := []authz.Rule{
		{ID: "id-1", Source: "web", Action: authz.Allow, Precedence: 9},
		{ID: "mobile->api", Source: "mobile", Precedence: 9, Permissions: []authz.Permission{
			{Action: authz.Allow, PathRegex: "/a.*", Methods: []string{"POST"},
				Headers: []authz.HeaderRule{{Name: "x-a", Suffix: "z", Invert: true, IgnoreCase: true}}},
			{Action: authz.Allow, Unsupported: "jwt"},
			{Action: authz.Deny},
		}},
		{ID: "legacy->api", Source: "legacy", Action: authz.Deny, Precedence: 9},
		{ID: "*->api", Source: "*", Action: authz.Deny, Precedence: 7},
	}
	got := authz.FromConsul(ints)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("FromConsul:\n got %+v\nwant %+v", got, want)
	}
	tab, err := authz.Compile("api", got, authz.Allow)
	if err != nil {
		t.Fatal(err)
	}
	// The JWT allow never matches; the "maybe" deny after it decides.
	if d := tab.Decide("mobile", "/b", nil); d.Allow || d.Permission != 2 {
		t.Errorf("mobile /b: %+v", d)
	}
	if len(authz.FromConsul(nil)) != 0 {
		t.Error("FromConsul(nil) is not empty")
	}
}
