// Package origdst is transparent interception on the listener side: it
// reads where a connection redirected by iptables REDIRECT was originally
// headed (SO_ORIGINAL_DST), tells gRPC connections from other traffic by
// their first bytes, carries the original destination into each call's
// context, and relays non-gRPC connections to their original destination as
// opaque TCP.
//
// It plugs into grpc-go as a credentials.TransportCredentials, the hook
// grpc-go gives a listener for per-connection setup: ServerHandshake runs on
// the connection's own goroutine (so a slow client delays nobody), its
// AuthInfo reaches every call through peer.FromContext, and
// credentials.ErrConnDispatched hands a connection that is not gRPC out of
// the server without closing it.
package origdst
