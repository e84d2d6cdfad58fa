package identity_test

import (
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/meshd/meshd/identity"
)

func TestParseID(t *testing.T) {
	t.Parallel()
	good := identity.ID{TrustDomain: "11111111-2222-3333-4444-555555555555.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}
	tests := []struct {
		name string
		uri  string
		want identity.ID
		ok   bool
	}{
		{"consul leaf", "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web", good, true},
		{"service with dots and dashes", "spiffe://td.consul/ns/ns_1/dc/dc-2/svc/my.svc-v2", identity.ID{TrustDomain: "td.consul", Namespace: "ns_1", Datacenter: "dc-2", Service: "my.svc-v2"}, true},
		{"wrong scheme", "https://td.consul/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"upper-case scheme", "SPIFFE://td.consul/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"no path", "spiffe://td.consul", identity.ID{}, false},
		{"root only", "spiffe://td.consul/", identity.ID{}, false},
		{"empty trust domain", "spiffe:///ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"upper-case trust domain", "spiffe://TD.consul/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"port", "spiffe://td.consul:8443/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"user info", "spiffe://u@td.consul/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"query", "spiffe://td.consul/ns/default/dc/dc1/svc/web?x=1", identity.ID{}, false},
		{"fragment", "spiffe://td.consul/ns/default/dc/dc1/svc/web#x", identity.ID{}, false},
		{"trailing slash", "spiffe://td.consul/ns/default/dc/dc1/svc/web/", identity.ID{}, false},
		{"missing service", "spiffe://td.consul/ns/default/dc/dc1/svc/", identity.ID{}, false},
		{"short path", "spiffe://td.consul/ns/default/dc/dc1", identity.ID{}, false},
		{"swapped keys", "spiffe://td.consul/dc/dc1/ns/default/svc/web", identity.ID{}, false},
		{"partition", "spiffe://td.consul/ap/part/ns/default/dc/dc1/svc/web", identity.ID{}, false},
		{"agent identity", "spiffe://td.consul/agent/client/dc/dc1/id/node", identity.ID{}, false},
		{"dot-dot segment", "spiffe://td.consul/ns/../dc/dc1/svc/web", identity.ID{}, false},
		{"percent-encoded", "spiffe://td.consul/ns/default/dc/dc1/svc/w%65b", identity.ID{}, false},
		{"double slash", "spiffe://td.consul/ns//dc/dc1/svc/web", identity.ID{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := identity.ParseID(tt.uri)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseID(%q) = %+v, %v; want ok=%v", tt.uri, got, err, tt.ok)
			}
			if got != tt.want {
				t.Fatalf("ParseID(%q) = %+v, want %+v", tt.uri, got, tt.want)
			}
			if tt.ok && got.String() != tt.uri {
				t.Fatalf("String() = %q, want %q", got.String(), tt.uri)
			}
		})
	}
}

func TestIDFromCert(t *testing.T) {
	t.Parallel()
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	web := "spiffe://td.consul/ns/default/dc/dc1/svc/web"
	tests := []struct {
		name string
		cert *x509.Certificate
		want string // "" means an error
	}{
		{"one spiffe URI", &x509.Certificate{URIs: []*url.URL{u(web)}}, web},
		{"one spiffe URI and DNS names", &x509.Certificate{URIs: []*url.URL{u(web)}, DNSNames: []string{"web"}}, web},
		{"no URI", &x509.Certificate{DNSNames: []string{"web"}}, ""},
		{"two URIs", &x509.Certificate{URIs: []*url.URL{u(web), u("spiffe://td.consul/ns/default/dc/dc1/svc/api")}}, ""},
		{"spiffe and another URI", &x509.Certificate{URIs: []*url.URL{u("https://example.com/"), u(web)}}, ""},
		{"wrong scheme", &x509.Certificate{URIs: []*url.URL{u("https://td.consul/ns/default/dc/dc1/svc/web")}}, ""},
		{"bad path", &x509.Certificate{URIs: []*url.URL{u("spiffe://td.consul/svc/web")}}, ""},
		{"nil certificate", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := identity.IDFromCert(tt.cert)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("IDFromCert = %v, want an error", got)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("IDFromCert = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}
