package jwtauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// keySet is one parsed JWKS: the public keys by key id. Immutable.
type keySet struct {
	byKID map[string]key
	// only is the set's key when it has exactly one, for tokens without
	// a kid.
	only *key
}

// key is one verification key and the JWS algorithm it serves.
type key struct {
	alg string // RS256, ES256 or EdDSA
	pub crypto.PublicKey
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS parses a JSON Web Key Set (RFC 7517). Keys meshd cannot use
// (encryption keys, other curves or algorithms) are skipped; a set with no
// usable key is an error, so that a broken rewrite never replaces a good
// set.
func parseJWKS(data []byte) (*keySet, error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	ks := &keySet{byKID: map[string]key{}}
	var skipped []error
	for i, k := range doc.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		parsed, err := parseJWK(k)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("key %d (kid %q): %w", i, k.Kid, err))
			continue
		}
		ks.byKID[k.Kid] = parsed
	}
	if len(ks.byKID) == 0 {
		return nil, fmt.Errorf("jwks: no usable RS256, ES256 or EdDSA signing key: %w", errors.Join(skipped...))
	}
	if len(ks.byKID) == 1 {
		for _, k := range ks.byKID {
			ks.only = &k
		}
	}
	return ks, nil
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

func parseJWK(k jwk) (key, error) {
	switch k.Kty {
	case "RSA":
		if k.Alg != "" && k.Alg != "RS256" {
			return key{}, fmt.Errorf("unsupported RSA alg %q", k.Alg)
		}
		n, err1 := b64(k.N)
		e, err2 := b64(k.E)
		if err := errors.Join(err1, err2); err != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
			return key{}, fmt.Errorf("bad RSA n or e")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < 2048 {
			return key{}, fmt.Errorf("RSA key of %d bits, want at least 2048", pub.N.BitLen())
		}
		return key{alg: "RS256", pub: pub}, nil
	case "EC":
		if k.Crv != "P-256" || (k.Alg != "" && k.Alg != "ES256") {
			return key{}, fmt.Errorf("unsupported EC key (crv %q, alg %q): want P-256/ES256", k.Crv, k.Alg)
		}
		x, err1 := b64(k.X)
		y, err2 := b64(k.Y)
		if err := errors.Join(err1, err2); err != nil || len(x) != 32 || len(y) != 32 {
			return key{}, fmt.Errorf("bad EC x or y")
		}
		// Uncompressed point encoding; ParseUncompressedPublicKey checks
		// the point is on the curve.
		pt := append(append([]byte{4}, x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
		if err != nil {
			return key{}, fmt.Errorf("bad EC point: %w", err)
		}
		return key{alg: "ES256", pub: pub}, nil
	case "OKP":
		if k.Crv != "Ed25519" || (k.Alg != "" && k.Alg != "EdDSA" && k.Alg != "Ed25519") {
			return key{}, fmt.Errorf("unsupported OKP key (crv %q): want Ed25519", k.Crv)
		}
		x, err := b64(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return key{}, fmt.Errorf("bad Ed25519 x")
		}
		return key{alg: "EdDSA", pub: ed25519.PublicKey(x)}, nil
	}
	return key{}, fmt.Errorf("unsupported kty %q", k.Kty)
}
