package grpcweb

import (
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Headers gRPC-Web clients send, allowed in every preflight answer, and
// the response headers they read, always exposed.
const (
	allowHeaders  = "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization"
	exposeHeaders = "grpc-status, grpc-message, grpc-status-details-bin"
	preflightAge  = "600" // seconds a browser may cache a preflight answer
)

// allowsOrigin reports whether a browser request from origin to host may
// be answered: origin is in allow (or allow has "*"), or it is the same
// origin (its host:port is the request's Host).
func allowsOrigin(allow []string, origin, host string) bool {
	for _, o := range allow {
		if o == "*" || strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// preflight answers a CORS preflight: 204 with the allowed method and
// headers for an allowed origin, 403 without CORS headers otherwise (the
// browser then refuses the call itself).
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	hdr := w.Header()
	hdr.Add("Vary", "Origin")
	if origin == "" || !allowsOrigin(h.allow, origin, r.Host) {
		http.Error(w, "meshd: origin not allowed by this listener's grpc_web.allow_origins", http.StatusForbidden)
		return
	}
	if m := r.Header.Get("Access-Control-Request-Method"); m != "" && m != http.MethodPost {
		http.Error(w, "meshd: gRPC-Web calls are POST", http.StatusForbidden)
		return
	}
	allowed := allowHeaders
	// Metadata is any header the page sets: allow what the preflight
	// asks for, when it is a valid field name.
	for _, v := range r.Header.Values("Access-Control-Request-Headers") {
		for _, name := range strings.Split(v, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name != "" && httpguts.ValidHeaderFieldName(name) && !strings.Contains(allowHeaders, name) {
				allowed += ", " + name
			}
		}
	}
	hdr.Set("Access-Control-Allow-Origin", origin)
	hdr.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
	hdr.Set("Access-Control-Allow-Headers", allowed)
	hdr.Set("Access-Control-Allow-Credentials", "true")
	hdr.Set("Access-Control-Expose-Headers", exposeHeaders)
	hdr.Set("Access-Control-Max-Age", preflightAge)
	w.WriteHeader(http.StatusNoContent)
}
