package consultest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/hashicorp/consul/api"
)

// RotateCA gives the agent's built-in Connect CA a new root, as an
// operator's `consul connect ca set-config` would. Consul derives the root
// from the key settings, and the dev agent's own (ec, 256, no key) map to
// the root it has, so the new root gets a fresh P-256 key. The old root
// stays trusted (and cross-signs the new one) while leaves are re-issued,
// which Consul 1.14 jitters over up to about 30 s.
func (a *Agent) RotateCA(t testing.TB) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Client.Connect().CASetConfig(&api.CAConfig{
		Provider: "consul",
		Config: map[string]any{
			"PrivateKeyType": "ec",
			"PrivateKeyBits": 256,
			"PrivateKey":     string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})),
		},
	}, nil)
	if err != nil {
		t.Fatalf("consultest: rotate the CA: %v", err)
	}
}
