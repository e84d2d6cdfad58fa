package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Material is one immutable version of the workload's identity: everything
// a handshake needs, built together so that a handshake never mixes a new
// leaf with old roots. Sources swap whole Materials; nobody may modify one
// after it was built.
type Material struct {
	// Cert is the leaf, its chain (intermediates, such as a new root
	// cross-signed by the old one during a CA rotation) and its private
	// key. The whole chain is always sent, so that peers which still trust
	// only the old root can verify a leaf from the new one.
	Cert tls.Certificate
	// Leaf is Cert's parsed leaf.
	Leaf *x509.Certificate
	// ID is the SPIFFE ID in Leaf.
	ID ID
	// Roots holds every trusted CA: during a rotation Consul lists the old
	// and the new root, and both must verify.
	Roots *x509.CertPool
	// RootIDs names the roots: Consul's root IDs, or for files the
	// SHA-256 fingerprints (hex) of the CA certificates.
	RootIDs []string
	// TrustDomain is the trust domain peers must belong to: Consul's
	// CARootList.TrustDomain, or for files the leaf's own.
	TrustDomain string

	roots     []RootStatus // for Status
	serverCfg *tls.Config  // the per-handshake server config for this Material
}

// root is one trusted CA as a Source reads it.
type root struct {
	id, name string
	active   bool
	cert     *x509.Certificate
}

// newMaterial builds a Material from a leaf chain and key (PEM) and the
// trusted roots. trustDomain "" means the leaf's own. It refuses a leaf
// that does not chain to roots or lies outside trustDomain: such a pair
// would fail every handshake, so the Source keeps the last consistent
// Material instead (a restarted Consul sends its new roots and new leaf as
// two answers).
func newMaterial(certPEM, keyPEM []byte, roots []root, trustDomain string) (*Material, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: leaf key pair: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("identity: parse leaf: %w", err)
		}
		pair.Leaf = leaf
	}
	id, err := IDFromCert(leaf)
	if err != nil {
		return nil, err
	}
	if trustDomain == "" {
		trustDomain = id.TrustDomain
	}
	if id.TrustDomain != trustDomain {
		return nil, fmt.Errorf("identity: leaf %s is not in the roots' trust domain %s", id, trustDomain)
	}
	if len(roots) == 0 {
		return nil, errors.New("identity: no trusted roots")
	}
	m := &Material{Cert: pair, Leaf: leaf, ID: id, Roots: x509.NewCertPool(), TrustDomain: trustDomain}
	for _, r := range roots {
		m.Roots.AddCert(r.cert)
		m.RootIDs = append(m.RootIDs, r.id)
		m.roots = append(m.roots, RootStatus{ID: r.id, Name: r.name, Active: r.active, NotAfter: r.cert.NotAfter})
	}
	// A sidecar both serves and dials with one leaf, so it must verify
	// for both uses, as peers will check it.
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := verifyChain(m, pair.Certificate, leaf, eku); err != nil {
			return nil, fmt.Errorf("identity: own leaf %s: %w", id, err)
		}
	}
	m.serverCfg = m.newServerConfig()
	return m, nil
}

// verifyChain verifies a peer's chain (raw, leaf first; leaf is its parsed
// first element or nil) against m's roots, with the chain's other
// certificates as intermediates, for the key usage eku, and returns the
// leaf's SPIFFE ID after checking it is in m's trust domain. It is the one
// verification both handshake sides and newMaterial use.
func verifyChain(m *Material, raw [][]byte, leaf *x509.Certificate, eku x509.ExtKeyUsage) (ID, error) {
	if len(raw) == 0 {
		return ID{}, errors.New("no certificate presented")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		if i == 0 && leaf != nil {
			certs[0] = leaf
			continue
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return ID{}, fmt.Errorf("parse certificate %d of the chain: %w", i, err)
		}
		certs[i] = c
	}
	return verifyCerts(m, certs, eku)
}

// verifyCerts is verifyChain for parsed certificates.
func verifyCerts(m *Material, certs []*x509.Certificate, eku x509.ExtKeyUsage) (ID, error) {
	if len(certs) == 0 {
		return ID{}, errors.New("no certificate presented")
	}
	leaf := certs[0]
	opts := x509.VerifyOptions{Roots: m.Roots, KeyUsages: []x509.ExtKeyUsage{eku}}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	id, idErr := IDFromCert(leaf)
	if _, err := leaf.Verify(opts); err != nil {
		who := "certificate"
		if idErr == nil {
			who = id.String()
		}
		return ID{}, fmt.Errorf("%s does not verify against the %d trusted roots of %s: %w", who, len(m.RootIDs), m.TrustDomain, err)
	}
	if idErr != nil {
		return ID{}, idErr
	}
	if id.TrustDomain != m.TrustDomain {
		return ID{}, fmt.Errorf("peer %s is not in trust domain %s", id, m.TrustDomain)
	}
	return id, nil
}

// serialHex formats a serial number as Consul does (LeafCert.SerialNumber:
// hex bytes separated by colons), so that Status matches Consul's view.
func serialHex(c *x509.Certificate) string {
	b := c.SerialNumber.Bytes()
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	return sb.String()
}

// expiry is the leaf's NotAfter, zero for a nil Material.
func (m *Material) expiry() time.Time {
	if m == nil {
		return time.Time{}
	}
	return m.Leaf.NotAfter
}
