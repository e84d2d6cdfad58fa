package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority made in the test: nothing on disk, nothing
// shared between tests. Its methods are safe for concurrent use.
type CA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pem    []byte
	serial atomic.Int64
}

// NewCA makes a CA whose certificate has common name name.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	return newCA(tb, name, nil, 1, 100)
}

// newCA makes a CA certificate signed by parent (nil: self-signed) with
// the given serial; its own leaves are numbered from next+1.
func newCA(tb testing.TB, name string, parent *CA, serial, next int64) *CA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &CA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.serial.Store(next)
	return ca
}

// PEM is the CA's certificate, PEM-encoded, as a trust file holds it.
func (ca *CA) PEM() []byte { return ca.pem }

// Pool is a CertPool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issue returns a PEM certificate and key for cn, valid for server and
// client auth, with SANs localhost and 127.0.0.1 plus names. Each has a new
// serial number, returned too, so that tests can tell certificates apart.
func (ca *CA) Issue(tb testing.TB, cn string, names ...string) (certPEM, keyPEM []byte, serial int64) {
	tb.Helper()
	serial = ca.serial.Add(1)
	certPEM, keyPEM = ca.issue(tb, &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     append([]string{"localhost"}, names...),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	return certPEM, keyPEM, serial
}

// issue signs tmpl (its names and serial set) with a new P-256 key, for a
// day, for server and client auth.
func (ca *CA) issue(tb testing.TB, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// KeyPair is Issue as a tls.Certificate, for clients and backends.
func (ca *CA) KeyPair(tb testing.TB, cn string, names ...string) tls.Certificate {
	tb.Helper()
	c, k, _ := ca.Issue(tb, cn, names...)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		tb.Fatal(err)
	}
	return pair
}

// IssueSPIFFE returns a PEM certificate and key shaped like a Consul
// Connect leaf: ECDSA P-256, one URI SAN (uri, a SPIFFE ID), no DNS names
// or IPs, valid for server and client auth. It returns the serial too.
func (ca *CA) IssueSPIFFE(tb testing.TB, uri string) (certPEM, keyPEM []byte, serial int64) {
	tb.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		tb.Fatal(err)
	}
	serial = ca.serial.Add(1)
	certPEM, keyPEM = ca.issue(tb, &x509.Certificate{SerialNumber: big.NewInt(serial), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement})
	return certPEM, keyPEM, serial
}

// Intermediate returns a CA whose certificate ca signs, named name. Its
// PEM is the intermediate certificate alone: a leaf it issues verifies
// against ca's Pool only when the intermediate is sent along.
func (ca *CA) Intermediate(tb testing.TB, name string) *CA {
	tb.Helper()
	return newCA(tb, name, ca, ca.serial.Add(1), 1000)
}
