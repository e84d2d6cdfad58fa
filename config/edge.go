package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// This file holds the edge settings: routes per listener (Route.Listeners),
// host rules (Match.Authority), header rules (Route.RequestHeaders,
// Route.ResponseHeaders, Cluster.Authority) and JWT authentication
// (JWTProviders, Route.JWT).

// HeaderRules edits one direction's header fields. Names are lowercase
// metadata keys. Removes apply first, then sets, then adds, so a rule may
// remove a name and add it back.
type HeaderRules struct {
	// Set replaces every field of the name with this one value (and
	// inserts it when absent).
	Set map[string]string `yaml:"set"`
	// Add appends a field, keeping any of the same name already there.
	Add map[string]string `yaml:"add"`
	// Remove drops every field of these names.
	Remove []string `yaml:"remove"`
}

// RouteJWT requires a token on a route.
type RouteJWT struct {
	// Provider names a jwt_providers entry. Required.
	Provider string `yaml:"provider"`
}

// JWTProvider is one token issuer: a call on a route naming it must carry
// "authorization: Bearer <JWT>" signed (RS256, ES256 or EdDSA) by a key of
// the provider's JWKS, with its issuer and one of its audiences, and not
// expired (30s of clock skew allowed). Otherwise meshd answers
// UNAUTHENTICATED.
type JWTProvider struct {
	// Name identifies the provider (routes' jwt.provider, metrics).
	// Required, unique.
	Name string `yaml:"name"`
	// Issuer is the required "iss" claim. Required.
	Issuer string `yaml:"issuer"`
	// Audiences: the token's "aud" must name at least one. Required.
	Audiences []string `yaml:"audiences"`
	// JWKSFile is a JSON Web Key Set file, read at start and again
	// whenever it changes (key rotation by rewriting the file). Exactly
	// one of JWKSFile and JWKSURL is required.
	JWKSFile string `yaml:"jwks_file"`
	// JWKSURL is a JWKS served over HTTP(S) (an identity provider's
	// .well-known/jwks.json): fetched at start, cached, refreshed every
	// JWKSRefresh, with backoff after failures; the last good set keeps
	// serving when a fetch fails. Until the first fetch succeeds, calls
	// are answered UNAUTHENTICATED ("jwks not loaded yet") and /ready
	// fails.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSRefresh is how often jwks_url is fetched again. Default 5m.
	JWKSRefresh Duration `yaml:"jwks_refresh"`
	// ClaimsToHeaders forwards verified claims upstream as metadata:
	// claim name → header name ({sub: x-user-id}). A header named here
	// replaces any the client sent. String, number and boolean claims are
	// forwarded as text; others are skipped.
	ClaimsToHeaders map[string]string `yaml:"claims_to_headers"`
	// Forward keeps the authorization header on the call sent upstream.
	// Default false: the token stops at meshd.
	Forward bool `yaml:"forward"`
}

// DefaultJWKSRefresh is jwt_providers[].jwks_refresh when unset.
const DefaultJWKSRefresh = 5 * time.Minute

// JWTProvider returns the provider named name, or nil.
func (c *Config) JWTProvider(name string) *JWTProvider {
	for i := range c.JWTProviders {
		if c.JWTProviders[i].Name == name {
			return &c.JWTProviders[i]
		}
	}
	return nil
}

// ReservedHeader says why a header rule may not touch name, or "" when it
// may: pseudo headers and the fields gRPC and HTTP/2 themselves own
// (grpc-*, te, content-type, hop-by-hop names) would break the call or
// smuggle framing past meshd.
func ReservedHeader(name string) string {
	switch {
	case name == "":
		return "empty header name"
	case name != strings.ToLower(name):
		return fmt.Sprintf("header names are lowercase: %q", name)
	case strings.HasPrefix(name, ":"):
		return fmt.Sprintf("%q is a pseudo header", name)
	case strings.HasPrefix(name, "grpc-"):
		return fmt.Sprintf("%q is reserved by gRPC (grpc-*)", name)
	case strings.HasPrefix(name, "x-meshd-"):
		return fmt.Sprintf("%q is meshd's own (x-meshd-*, never forwarded)", name)
	}
	switch name {
	case "te", "content-type":
		return fmt.Sprintf("%q is part of the gRPC protocol", name)
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "http2-settings":
		return fmt.Sprintf("%q is a hop-by-hop header", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Sprintf("%q: header names use a-z 0-9 - _ . only", name)
		}
	}
	return ""
}

// validHeaderValue reports whether v can be sent as a header value (no
// control characters, which would be malformed in HTTP/2).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func (v *validator) headerRules(p string, r *HeaderRules) {
	if r == nil {
		return
	}
	check := func(fp, name string) {
		if why := ReservedHeader(name); why != "" {
			v.add(fp, "%s", why)
		}
	}
	for _, k := range sortedKeys(r.Set) {
		check(p+".set."+k, k)
		if !validHeaderValue(r.Set[k]) {
			v.add(p+".set."+k, "value has control characters")
		}
		if _, ok := r.Add[k]; ok {
			v.add(p+".add."+k, "%q is both set and added: set replaces, add appends; pick one", k)
		}
	}
	for _, k := range sortedKeys(r.Add) {
		check(p+".add."+k, k)
		if !validHeaderValue(r.Add[k]) {
			v.add(p+".add."+k, "value has control characters")
		}
	}
	for j, k := range r.Remove {
		check(fmt.Sprintf("%s.remove[%d]", p, j), k)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// CheckAuthority reports what is wrong with a match.authority rule, or nil.
func CheckAuthority(a string) error {
	host := a
	if h, port, err := net.SplitHostPort(a); err == nil {
		if port == "" {
			return fmt.Errorf("authority %q: empty port", a)
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return fmt.Errorf("authority %q: invalid port", a)
			}
		}
		host = h
	}
	rest, _ := strings.CutPrefix(host, "*.")
	if rest == "" || strings.HasPrefix(rest, ".") {
		return fmt.Errorf("authority %q: empty host or label", a)
	}
	if strings.Contains(rest, "*") {
		return fmt.Errorf("authority %q: only a leading \"*.\" wildcard is allowed", a)
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if c <= ' ' || c == '/' || c == '@' || c == 0x7f || c == ',' {
			return fmt.Errorf("authority %q: invalid host character %q", a, c)
		}
	}
	return nil
}

// edge validates the edge settings of routes and clusters and the JWT
// providers. listeners are the configured listener names.
func (v *validator) edge() {
	listeners := map[string]bool{}
	for _, l := range v.c.Listeners {
		listeners[l.Name] = true
	}
	providers := v.jwtProviders()
	for i := range v.c.Routes {
		r := &v.c.Routes[i]
		p := fmt.Sprintf("routes[%d]", i)
		seen := map[string]bool{}
		for j, l := range r.Listeners {
			lp := fmt.Sprintf("%s.listeners[%d]", p, j)
			switch {
			case !listeners[l]:
				v.add(lp, "unknown listener %q (listeners: %s)", l, strings.Join(sortedSet(listeners), ", "))
			case seen[l]:
				v.add(lp, "listener %q named twice", l)
			}
			seen[l] = true
		}
		if a := r.Match.Authority; a != "" {
			if err := CheckAuthority(a); err != nil {
				v.add(p+".match.authority", "%v", err)
			}
		}
		v.headerRules(p+".request_headers", r.RequestHeaders)
		v.headerRules(p+".response_headers", r.ResponseHeaders)
		if j := r.JWT; j != nil {
			switch {
			case j.Provider == "":
				v.add(p+".jwt.provider", "required")
			case !providers[j.Provider]:
				v.add(p+".jwt.provider", "unknown jwt provider %q", j.Provider)
			}
		}
	}
	for i, cl := range v.c.Clusters {
		if cl.Authority == "" {
			continue
		}
		if err := CheckAuthority(cl.Authority); err != nil || strings.HasPrefix(cl.Authority, "*") {
			v.add(fmt.Sprintf("clusters[%d].authority", i), "invalid authority %q: want host or host:port", cl.Authority)
		}
	}
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (v *validator) jwtProviders() map[string]bool {
	names := map[string]bool{}
	for i, jp := range v.c.JWTProviders {
		p := fmt.Sprintf("jwt_providers[%d]", i)
		v.uniqueName(p, "jwt provider", jp.Name, names)
		if jp.Issuer == "" {
			v.add(p+".issuer", "required")
		}
		if len(jp.Audiences) == 0 {
			v.add(p+".audiences", "at least one audience is required")
		}
		switch {
		case jp.JWKSFile != "" && jp.JWKSURL != "":
			v.add(p, "set either jwks_file or jwks_url, not both")
		case jp.JWKSFile == "" && jp.JWKSURL == "":
			v.add(p, "jwks_file or jwks_url is required")
		case jp.JWKSURL != "":
			u, err := url.Parse(jp.JWKSURL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.add(p+".jwks_url", "want an http(s) URL, got %q", jp.JWKSURL)
			}
		}
		if r := jp.JWKSRefresh.D(); r != 0 && r < time.Second {
			v.add(p+".jwks_refresh", "must be at least 1s, got %v", r)
		}
		for _, c := range sortedKeys(jp.ClaimsToHeaders) {
			h := jp.ClaimsToHeaders[c]
			if why := ReservedHeader(h); why != "" {
				v.add(p+".claims_to_headers."+c, "%s", why)
			}
			if h == "authorization" {
				v.add(p+".claims_to_headers."+c, "a claim may not overwrite the authorization header")
			}
		}
	}
	return names
}

func (c *Config) applyEdgeDefaults() {
	for i := range c.JWTProviders {
		if c.JWTProviders[i].JWKSRefresh == 0 {
			c.JWTProviders[i].JWKSRefresh = Duration(DefaultJWKSRefresh)
		}
	}
}
