package identity_test

import (
	"testing"

	"github.com/meshd/meshd/identity"
)

// FuzzParseID: whatever ParseID accepts, String writes back unchanged, so
// that an ID has one spelling and two parsers cannot disagree on it.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
		"spiffe://td.consul/ns/default/dc/dc1/svc/web/",
		"spiffe://td.consul:1/ns/a/dc/b/svc/c",
		"spiffe://td/ap/p/ns/a/dc/b/svc/c",
		"spiffe://td/ns/%2e%2e/dc/b/svc/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := identity.ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		if id.TrustDomain == "" || id.Namespace == "" || id.Datacenter == "" || id.Service == "" {
			t.Fatalf("ParseID(%q) = %+v has an empty part", s, id)
		}
	})
}
