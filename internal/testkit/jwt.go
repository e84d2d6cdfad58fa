package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// JWTKey is a signing key for tests of meshd's JWT authentication: it
// signs tokens and describes itself as a JWK.
type JWTKey struct {
	Alg  string // RS256, ES256 or EdDSA
	KID  string
	priv crypto.Signer
}

// NewJWTKey generates a key for alg (RS256, ES256 or EdDSA) with key id kid.
func NewJWTKey(t testing.TB, alg, kid string) *JWTKey {
	t.Helper()
	k := &JWTKey{Alg: alg, KID: kid}
	var err error
	switch alg {
	case "RS256":
		k.priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		k.priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, k.priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("NewJWTKey: unknown alg %q", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// JWK is the key's public half as a JSON Web Key.
func (k *JWTKey) JWK() map[string]string {
	enc := base64.RawURLEncoding.EncodeToString
	m := map[string]string{"kid": k.KID, "use": "sig", "alg": k.Alg}
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", enc(pub.N.Bytes()), enc(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		b, _ := pub.Bytes() // 0x04 || X || Y
		m["kty"], m["crv"], m["x"], m["y"] = "EC", "P-256", enc(b[1:33]), enc(b[33:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", enc(pub)
	}
	return m
}

// JWKS is a JSON Web Key Set of the keys' public halves.
func JWKS(keys ...*JWTKey) []byte {
	doc := struct {
		Keys []map[string]string `json:"keys"`
	}{Keys: []map[string]string{}}
	for _, k := range keys {
		doc.Keys = append(doc.Keys, k.JWK())
	}
	b, _ := json.Marshal(doc)
	return b
}

// Sign returns a compact JWT of claims, signed with the key and naming
// its kid.
func (k *JWTKey) Sign(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.Alg), claims)
	tok.Header["kid"] = k.KID
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
