package jwtauth

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/config"
)

// Skew is the clock skew allowed on exp, nbf and iat.
const Skew = 30 * time.Second

// Reasons a token is refused: the reason label of
// meshd_jwt_denied_total, a fixed set.
const (
	ReasonMissing       = "missing"         // no authorization: Bearer header
	ReasonMalformed     = "malformed"       // not a JWT
	ReasonAlgorithm     = "bad_algorithm"   // not RS256/ES256/EdDSA, or not the key's
	ReasonUnknownKey    = "unknown_kid"     // no key with the token's kid
	ReasonSignature     = "bad_signature"   // the signature does not verify
	ReasonExpired       = "expired"         // exp passed (beyond Skew)
	ReasonNotYetValid   = "not_yet_valid"   // nbf or iat in the future
	ReasonIssuer        = "wrong_issuer"    // iss is not the provider's
	ReasonAudience      = "wrong_audience"  // aud names none of the provider's
	ReasonClaims        = "invalid_claims"  // exp missing, or a claim of the wrong type
	ReasonNotLoaded     = "jwks_not_loaded" // the provider has no keys yet
	ReasonUnknownSource = "unknown_provider"
)

// Denial is why a call's token was refused. Its message is what the client
// reads after "meshd: jwt: "; it never holds the token.
type Denial struct {
	Provider string
	Reason   string // one of the Reason constants
	Msg      string // e.g. "token expired"
}

func (d *Denial) Error() string { return "meshd: jwt: " + d.Msg }

// DenyReason is the metric label of the refusal.
func (d *Denial) DenyReason() string { return d.Reason }

// DenyProvider names the provider that refused.
func (d *Denial) DenyProvider() string { return d.Provider }

// Provider verifies the tokens of one jwt_providers entry. Its keys are
// swapped atomically by its source (source.go); Verify is safe for
// concurrent use and never blocks.
type Provider struct {
	name    string
	parser  *jwt.Parser
	claims  []claimHeader // sorted by claim name
	keys    atomic.Pointer[keySet]
	refresh chan struct{} // nudges a URL source on an unknown kid; nil for files
	// fetched is when the URL source last fetched (unix nanos), so that
	// unknown kids do not turn into a fetch storm.
	fetched atomic.Int64
	// failures counts the key loads (file reads, fetches) that failed
	// since start, for tests and operators' logs.
	failures atomic.Int64
}

type claimHeader struct{ claim, header string }

func newProvider(c config.JWTProvider, now func() time.Time) *Provider {
	p := &Provider{
		name: c.Name,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"RS256", "ES256", "EdDSA"}),
			jwt.WithIssuer(c.Issuer),
			jwt.WithAudience(c.Audiences...),
			jwt.WithLeeway(Skew),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(now),
		),
	}
	for cl, h := range c.ClaimsToHeaders {
		p.claims = append(p.claims, claimHeader{cl, h})
	}
	slices.SortFunc(p.claims, func(a, b claimHeader) int { return strings.Compare(a.claim, b.claim) })
	return p
}

// Name is the provider's config name.
func (p *Provider) Name() string { return p.name }

// Loaded reports whether the provider has keys.
func (p *Provider) Loaded() bool { return p.keys.Load() != nil }

func (p *Provider) deny(reason, msg string) ([]hpack.HeaderField, error) {
	return nil, &Denial{Provider: p.name, Reason: reason, Msg: msg}
}

// Headers is the read side of the request's metadata (engine.Header). An
// alias of the literal interface, so that the director's TokenVerifier,
// which spells the same literal, is satisfied by *Set.
type Headers = interface {
	Get(name string) []string
}

// Verify checks the call's "authorization: Bearer <JWT>" and returns the
// header fields its claims_to_headers forward, or a *Denial.
func (p *Provider) Verify(h Headers) ([]hpack.HeaderField, error) {
	vals := h.Get("authorization")
	if len(vals) == 0 {
		return p.deny(ReasonMissing, `missing token (want "authorization: Bearer <JWT>")`)
	}
	if len(vals) > 1 {
		return p.deny(ReasonMalformed, "more than one authorization header")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return p.deny(ReasonMissing, `authorization is not a bearer token (want "Bearer <JWT>")`)
	}
	ks := p.keys.Load()
	if ks == nil {
		return p.deny(ReasonNotLoaded, "jwks not loaded yet")
	}
	var unknownKID bool
	claims := jwt.MapClaims{}
	_, err := p.parser.ParseWithClaims(strings.TrimSpace(tok), claims, func(t *jwt.Token) (any, error) {
		var k *key
		if kid, _ := t.Header["kid"].(string); kid != "" {
			if kk, ok := ks.byKID[kid]; ok {
				k = &kk
			}
		} else {
			k = ks.only
		}
		if k == nil {
			unknownKID = true
			return nil, errUnknownKID
		}
		if t.Method.Alg() != k.alg {
			return nil, errKeyAlg
		}
		return k.pub, nil
	})
	if err != nil {
		if unknownKID {
			p.nudge()
		}
		reason, msg := classify(err)
		return p.deny(reason, msg)
	}
	if len(p.claims) == 0 {
		return nil, nil
	}
	out := make([]hpack.HeaderField, 0, len(p.claims))
	for _, ch := range p.claims {
		if v, ok := claimText(claims[ch.claim]); ok {
			out = append(out, hpack.HeaderField{Name: ch.header, Value: v})
		}
	}
	return out, nil
}

var (
	errUnknownKID = errors.New("unknown key id")
	errKeyAlg     = errors.New("algorithm does not match the key")
)

// classify maps golang-jwt's errors to a reason and a message.
func classify(err error) (reason, msg string) {
	switch {
	case errors.Is(err, errUnknownKID):
		return ReasonUnknownKey, "token signed by an unknown key (kid)"
	case errors.Is(err, errKeyAlg):
		return ReasonAlgorithm, "token algorithm does not match its key"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformed, "malformed token"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonSignature, "invalid token signature"
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired, "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid, "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonIssuer, "token issuer not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonAudience, "token audience not accepted"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// golang-jwt reports a method outside WithValidMethods so.
		return ReasonAlgorithm, "token algorithm not accepted (want RS256, ES256 or EdDSA)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), "aud claim"):
		return ReasonAudience, "token has no audience (aud)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonClaims, "token lacks a required claim (exp)"
	case errors.Is(err, jwt.ErrInvalidType), errors.Is(err, jwt.ErrTokenInvalidClaims):
		return ReasonClaims, "token claims invalid"
	}
	return ReasonMalformed, "invalid token"
}

// claimText renders a claim forwarded as a header: strings, numbers and
// booleans; anything else (objects, arrays) is not forwarded.
func claimText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		for i := 0; i < len(x); i++ {
			if c := x[i]; c < 0x20 && c != '\t' || c == 0x7f {
				return "", false // not sendable as a header value
			}
		}
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

// nudge asks a URL source to refetch soon: a token signed by a key the
// cached set lacks may come from a rotation the cache has not seen.
func (p *Provider) nudge() {
	if p.refresh == nil {
		return
	}
	select {
	case p.refresh <- struct{}{}:
	default:
	}
}
