package proxy

import (
	"strings"

	"google.golang.org/grpc/metadata"
)

// dropHeaders are never copied from the client's call to the backend's, nor
// from the backend's response headers to the client's. One list, both ways,
// in the spirit of net/http/httputil's hopHeaders:
//
//   - HTTP/2 pseudo headers (":authority" and friends): the transport writes
//     its own.
//   - grpc-go's reserved headers (internal/transport isReservedHeader): the
//     transport derives them from the call (content-type, grpc-timeout from
//     the deadline, grpc-encoding from the compressor, status on trailers).
//   - hop-by-hop headers from RFC 9110 §7.6.1 that HTTP/2 forbids anyway.
//
// Prefixes in dropPrefixes ("x-meshd-") are meshd's own.
var dropHeaders = map[string]bool{
	"content-type":            true,
	"user-agent":              true,
	"te":                      true,
	"grpc-message-type":       true,
	"grpc-encoding":           true,
	"grpc-accept-encoding":    true,
	"grpc-message":            true,
	"grpc-status":             true,
	"grpc-status-details-bin": true,
	"grpc-timeout":            true,
	"connection":              true,
	"keep-alive":              true,
	"proxy-connection":        true,
	"transfer-encoding":       true,
	"upgrade":                 true,
	"host":                    true,
}

// traceHeaders are dropped only when meshd traces: the client tracing
// handler then injects meshd's own span context. With tracing off they pass
// through so the caller's trace is not broken.
var traceHeaders = map[string]bool{"traceparent": true, "tracestate": true, "baggage": true}

const meshdPrefix = "x-meshd-"

// DroppedHeader reports whether key is removed when metadata crosses meshd.
// tracing says whether meshd's own tracing is on.
func DroppedHeader(key string, tracing bool) bool {
	if key == "" || key[0] == ':' || dropHeaders[key] || strings.HasPrefix(key, meshdPrefix) {
		return true
	}
	return tracing && traceHeaders[key]
}

// copyMD returns md without the dropped keys. Values are shared, not copied:
// grpc-go does not modify metadata it sends.
func copyMD(md metadata.MD, tracing bool) metadata.MD {
	out := make(metadata.MD, len(md))
	for k, v := range md {
		if !DroppedHeader(k, tracing) {
			out[k] = v
		}
	}
	return out
}
