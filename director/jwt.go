package director

import (
	"errors"

	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/engine"
)

// TokenVerifier checks the bearer token of a call on a route that
// requires one (jwtauth.Set). Verify runs on the client connection's
// reader goroutine and must not block. It returns the header fields the
// verified claims forward upstream (they replace the client's of the same
// name), or an error whose text is the client's reason; an error with a
// DenyReason() string method names the reason for metrics.
type TokenVerifier interface {
	Verify(provider string, h interface{ Get(string) []string }) ([]hpack.HeaderField, error)
}

// errNoVerifier refuses a route naming a provider when the State has no
// verifier: failing closed.
var errNoVerifier = errors.New("meshd: jwt: no provider loaded")

func (d *Director) verify(st *State, provider string, req *engine.Request) ([]hpack.HeaderField, error) {
	if st.JWT == nil {
		return nil, errNoVerifier
	}
	return st.JWT.Verify(provider, req.Header)
}

// denyReason is the metric reason of a refusal.
func denyReason(err error) string {
	var r interface{ DenyReason() string }
	if errors.As(err, &r) {
		return r.DenyReason()
	}
	return "unknown_provider"
}
