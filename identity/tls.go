package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// errNotReady fails handshakes before the Source has its first Material:
// meshd must not accept or dial mesh connections without an identity.
var errNotReady = errors.New("identity: no certificate yet (source not ready)")

// alpnH2 is the only protocol mesh connections speak.
var alpnH2 = []string{"h2"}

// ServerConfig returns the config of a mesh listener. Each handshake reads
// the current Material (through GetConfigForClient), so a rotated leaf or
// new roots take effect on the next connection without a restart. The peer
// must present a chain that verifies against the current roots (with its
// own intermediates), is valid for client auth, and carries exactly one
// SPIFFE ID in the current trust domain; which services may call is
// authorization's business, not this config's. Handshakes fail until the
// Source is ready. The config may be shared by any number of listeners.
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: alpnH2,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.Current()
			if m == nil {
				return nil, errNotReady
			}
			return m.serverCfg, nil
		},
	}
}

// newServerConfig is the server config of one Material: built once, shared
// by every handshake that starts while the Material is current, and bound
// to it so that a handshake verifies against the roots it presented with.
func (m *Material) newServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   alpnH2,
		Certificates: []tls.Certificate{m.Cert},
		// RequireAnyClientCert, not RequireAndVerifyClientCert: the
		// stock check knows nothing of SPIFFE IDs or trust domains.
		// VerifyConnection applies the mesh rule against this
		// Material's roots, and it runs on resumed sessions too.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := verifyCerts(m, cs.PeerCertificates, x509.ExtKeyUsageClientAuth); err != nil {
				return fmt.Errorf("identity: client: %w", err)
			}
			return nil
		},
	}
}

// ClientConfig returns the config for dialing a mesh peer that must be
// service expect. It presents the current leaf chain and replaces hostname
// verification (mesh leaves carry no DNS names) with the mesh rule: the
// server's chain verifies against the current roots with its
// intermediates, is valid for server auth, and carries exactly one SPIFFE
// ID, in the current trust domain, whose service is expect. An error says
// what failed ("peer is spiffe://…/svc/billing, want service api").
// InsecureSkipVerify is set only because VerifyConnection does all of the
// verification; do not copy this config and drop VerifyConnection.
func (s *Source) ClientConfig(expect string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         alpnH2,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m := s.Current()
			if m == nil {
				return nil, errNotReady
			}
			return &m.Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			m := s.Current()
			if m == nil {
				return errNotReady
			}
			id, err := verifyCerts(m, cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("identity: server (want service %s): %w", expect, err)
			}
			if id.Service != expect {
				return fmt.Errorf("identity: peer is %s, want service %s", id, expect)
			}
			return nil
		},
	}
}

// PeerID returns the identity of the peer of a completed mesh handshake
// (one made with ServerConfig or ClientConfig, which verified it). It is
// false before the handshake completed or without a peer certificate
// with exactly one SPIFFE ID.
func PeerID(cs *tls.ConnectionState) (ID, bool) {
	if cs == nil || !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 {
		return ID{}, false
	}
	id, err := IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return ID{}, false
	}
	return id, true
}
