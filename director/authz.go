package director

import (
	"context"
	"strings"

	"github.com/meshd/meshd/engine"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/router"
)

// Peer is the caller of a connection that arrived on a mesh listener. The
// server puts it in the connection's context (engine.Config.ConnContext)
// once the handshake is done; every call of the connection is authorized
// against it.
type Peer struct {
	// Service is the caller's service, from its verified certificate; ""
	// when it connected in plaintext (a permissive listener).
	Service string
	// ID is the caller's SPIFFE ID ("" when unauthenticated), for logs,
	// spans and denial messages.
	ID string
}

type peerKey struct{}

// WithPeer returns ctx carrying the mesh caller p.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the mesh caller of a call's connection; ok is false on
// a listener that is not a mesh listener.
func PeerFrom(ctx context.Context) (p Peer, ok bool) {
	p, ok = ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// Authorizer decides whether a mesh caller may make a call. The server
// implements it over the intentions in force (from Consul or the config),
// which it swaps as they change: a call is decided by the ones in force
// when it starts, on connections already open too.
type Authorizer interface {
	// Authorize decides a call to method from source (a service name, ""
	// when unauthenticated) with request metadata h.
	Authorize(source, method string, h router.Headers) bool
}

// WithAuthorizer authorizes every call that arrives on a mesh listener
// (its connection carries a Peer) with a, before routing. destination is
// this workload's service, named in denials.
func WithAuthorizer(a Authorizer, destination string) Option {
	return func(d *Director) { d.authz, d.destination = a, destination }
}

// healthPrefix is the gRPC health service's path prefix. Calls to it from
// any authenticated mesh identity skip authorization: a caller's health
// checks of this sidecar must see the local app's health, and an
// intention that denies the caller's calls must make them fail with
// PERMISSION_DENIED, never make the endpoint look unhealthy (ejected, or
// UNAVAILABLE for want of a health answer).
const healthPrefix = "/grpc.health.v1.Health/"

// authorize returns the denial of a call that arrived on a mesh listener
// and is not allowed, or nil. A call on any other listener is not its
// business.
func (d *Director) authorize(ctx context.Context, req *engine.Request) (peer string, err error) {
	if d.authz == nil {
		return "", nil
	}
	p, ok := PeerFrom(ctx)
	if !ok {
		return "", nil
	}
	if p.Service != "" && strings.HasPrefix(req.Method, healthPrefix) {
		return p.ID, nil
	}
	if d.authz.Authorize(p.Service, req.Method, req.Header) {
		return p.ID, nil
	}
	return p.ID, policy.ErrDenied(p.ID, d.destination)
}
