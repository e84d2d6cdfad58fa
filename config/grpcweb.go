package config

import (
	"net/url"
	"strconv"
)

// GRPCWeb accepts gRPC-Web requests on a listener (package grpcweb): the
// content types application/grpc-web, application/grpc-web+proto and
// application/grpc-web-text (base64), over HTTP/1.1 and HTTP/2 (h2c with
// prior knowledge, or TLS with ALPN h2, what browsers pick), unary and
// server streaming. Each request is translated once into a native gRPC
// call that is routed, balanced, traced, counted and logged like any
// other.
type GRPCWeb struct {
	// AllowOrigins lists the browser origins (scheme://host[:port]) that
	// may call this listener from another origin: CORS preflights
	// (OPTIONS) from them are answered, and their requests get
	// Access-Control-Allow-Origin. "*" allows every origin. Empty: only
	// same-origin requests (Origin's host equal to the request's Host),
	// and requests without an Origin header (non-browser clients).
	AllowOrigins []string `yaml:"allow_origins"`
}

// listenerEdge validates a listener's grpc_web and reflection settings.
func (v *validator) listenerEdge(p string, l *Listener) {
	if g := l.GRPCWeb; g != nil {
		if l.OriginalDst != nil {
			v.add(p+".grpc_web", "not available on an original_dst listener (it relays what is not HTTP/2)")
		}
		if l.MeshTLS != "" {
			v.add(p+".grpc_web", "not available on a mesh_tls listener (browsers have no mesh identity)")
		}
		for i, o := range g.AllowOrigins {
			if o == "*" {
				continue
			}
			u, err := url.Parse(o)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
				v.add(p+".grpc_web.allow_origins["+strconv.Itoa(i)+"]", "want \"*\" or an origin such as https://app.example.com, got %q", o)
			}
		}
	}
	if l.Reflection && l.OriginalDst != nil {
		v.add(p+".reflection", "not available on an original_dst listener")
	}
}
