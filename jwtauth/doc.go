// Package jwtauth verifies the bearer tokens (JWT) of calls on routes that
// require one (a route's jwt.provider, config.JWTProvider).
//
// Where the parts live:
//   - config/edge.go: the jwt_providers and route jwt keys, validated.
//   - jwtauth (here): Set, one per config's providers, owned by the server;
//     Provider.Verify, the check itself (signature by golang-jwt/jwt/v5 with
//     RS256/ES256/EdDSA only, issuer, audience, expiry and not-before with
//     30s of skew); keys.go parses a JWKS; source.go keeps each provider's
//     keys fresh: a jwks_file is re-read when it changes, a jwks_url is
//     fetched, cached and refreshed with backoff, the last good set kept.
//   - director: Direct calls the State's TokenVerifier (a Set) once the
//     route is known, before admission; a refusal is UNAUTHENTICATED
//     (policy.ErrUnauthenticated) and counted by reason
//     (meshd_jwt_denied_total{provider, reason}, metrics).
//   - router: a route with jwt drops the authorization header upstream
//     unless its provider has forward: true.
//   - server: builds the Set on every config whose providers changed,
//     stops the previous one, and holds /ready until every jwks_url has
//     loaded once.
//
// Verify runs on a client connection's reader goroutine, so it never does
// I/O: keys come from an atomically swapped snapshot. A provider whose URL
// has not answered yet refuses calls ("jwks not loaded yet") rather than
// wait. Tokens never reach logs: refusals carry a reason, never the token.
//
// golang-jwt/jwt/v5 was chosen over lestrrat-go/jwx/v3: it has no
// dependencies of its own, is the most used Go JWT library, and meshd needs
// only signature and claim checks; the JWKS handling it lacks is ~100 lines
// here (keys.go) over crypto/rsa, crypto/ecdsa and crypto/ed25519, and the
// caching policy (owner-stopped goroutine, backoff, last good kept, refetch
// on an unknown key id) is meshd's own either way.
package jwtauth
