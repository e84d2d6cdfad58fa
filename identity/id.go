package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// ID is a parsed Consul service identity, the SPIFFE ID Consul's CA puts in
// a leaf certificate's one URI SAN:
// spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>.
// Authorization decides on Service (and, where it matters, Namespace and
// Datacenter); TrustDomain says which Consul cluster vouched for it.
type ID struct {
	TrustDomain string
	Namespace   string
	Datacenter  string
	Service     string
}

// spiffeScheme is the only scheme ParseID accepts, written as it must
// appear (SPIFFE IDs are case sensitive and their scheme is lower case).
const spiffeScheme = "spiffe://"

// ParseID parses uri strictly: the scheme is "spiffe", the trust domain is
// a lower-case DNS-like name ([a-z0-9._-]), and the path is exactly
// /ns/<ns>/dc/<dc>/svc/<service> with non-empty segments of
// [A-Za-z0-9._-] that are not "." or "..". Anything else (a port, user
// info, a query, a fragment, percent-encoding, an enterprise partition
// segment, a trailing slash) is an error: an identity that two parsers could
// read differently must not authorize anything.
func ParseID(uri string) (ID, error) {
	rest, ok := strings.CutPrefix(uri, spiffeScheme)
	if !ok {
		return ID{}, fmt.Errorf("identity: %q is not a spiffe:// URI", uri)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("identity: %q has no path", uri)
	}
	if td == "" {
		return ID{}, fmt.Errorf("identity: %q has no trust domain", uri)
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return ID{}, fmt.Errorf("identity: %q: trust domain has character %q", uri, r)
		}
	}
	segs := strings.Split(path, "/")
	if len(segs) != 6 || segs[0] != "ns" || segs[2] != "dc" || segs[4] != "svc" {
		return ID{}, fmt.Errorf("identity: %q: path is not /ns/<ns>/dc/<dc>/svc/<service>", uri)
	}
	for _, s := range []string{segs[1], segs[3], segs[5]} {
		if err := checkSegment(s); err != nil {
			return ID{}, fmt.Errorf("identity: %q: %w", uri, err)
		}
	}
	return ID{TrustDomain: td, Namespace: segs[1], Datacenter: segs[3], Service: segs[5]}, nil
}

func checkSegment(s string) error {
	if s == "" || s == "." || s == ".." {
		return fmt.Errorf("path segment %q", s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("path segment %q has character %q", s, r)
		}
	}
	return nil
}

// String returns the SPIFFE ID as a URI, the form ParseID reads.
func (id ID) String() string {
	return spiffeScheme + id.TrustDomain + "/ns/" + id.Namespace + "/dc/" + id.Datacenter + "/svc/" + id.Service
}

// IDFromCert returns the identity of a leaf certificate. The X.509-SVID
// rule applies: exactly one URI SAN, and it is a valid SPIFFE ID. A
// certificate with two URIs is refused rather than searched, so that no
// issuer can smuggle a second identity next to the one it was asked for.
// It does not verify the certificate: callers verify the chain first.
func IDFromCert(c *x509.Certificate) (ID, error) {
	if c == nil {
		return ID{}, errors.New("identity: no certificate")
	}
	switch len(c.URIs) {
	case 0:
		return ID{}, errors.New("identity: certificate has no URI SAN (no SPIFFE ID)")
	case 1:
	default:
		return ID{}, fmt.Errorf("identity: certificate has %d URI SANs, want exactly one SPIFFE ID", len(c.URIs))
	}
	return ParseID(c.URIs[0].String())
}
