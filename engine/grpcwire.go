package engine

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// This file holds the few pieces of the gRPC-over-HTTP/2 wire protocol meshd
// has to understand: timeouts, status trailers, hop-by-hop headers and the
// 5-byte message prefixes. Payloads are never decoded.

// parseTimeout decodes a grpc-timeout value ("TimeoutValue TimeoutUnit",
// at most 8 digits). It mirrors grpc-go's decodeTimeout so a value grpc-go
// accepts is accepted here.
func parseTimeout(s string) (time.Duration, bool) {
	if len(s) < 2 || len(s) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	v, err := strconv.ParseUint(s[:len(s)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	if v > uint64(math.MaxInt64/int64(unit)) {
		return time.Duration(math.MaxInt64), true
	}
	return time.Duration(v) * unit, true
}

// appendTimeout encodes d as a grpc-timeout value in the finest unit whose
// value fits in 8 digits, rounding up so a positive budget never encodes as
// zero.
func appendTimeout(b []byte, d time.Duration) []byte {
	const maxVal = 1e8 - 1
	if d <= 0 {
		return append(b, "1n"...)
	}
	units := [...]struct {
		d time.Duration
		c byte
	}{
		{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'},
		{time.Second, 'S'}, {time.Minute, 'M'}, {time.Hour, 'H'},
	}
	for _, u := range units {
		v := (d + u.d - 1) / u.d
		if v <= maxVal {
			b = strconv.AppendInt(b, int64(v), 10)
			return append(b, u.c)
		}
	}
	return append(b, "99999999H"...)
}

// encodeGrpcMessage percent-encodes msg as the gRPC spec requires for
// grpc-message: bytes outside 0x20..0x7E and '%' become %XX.
func encodeGrpcMessage(msg string) string {
	clean := true
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return msg
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(msg)+16)
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b = append(b, '%', hex[c>>4], hex[c&0xf])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// statusFields builds the header fields that carry a meshd-generated status.
// trailersOnly selects the form for a response that has not started (HTTP
// status and content-type first); otherwise the fields are trailers.
func statusFields(st *status.Status, trailersOnly bool) []hpack.HeaderField {
	hf := make([]hpack.HeaderField, 0, 5)
	if trailersOnly {
		hf = append(hf,
			hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	}
	hf = append(hf, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(st.Code()))})
	if m := st.Message(); m != "" {
		hf = append(hf, hpack.HeaderField{Name: "grpc-message", Value: encodeGrpcMessage(m)})
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			hf = append(hf, hpack.HeaderField{Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(b)})
		}
	}
	return hf
}

// isHopByHop reports header fields never forwarded in either direction:
// connection-specific fields that HTTP/2 forbids and a proxy must not pass
// on (RFC 9113 §8.2.2, httputil's hopHeaders), and meshd's own "x-meshd-*".
// This is meshd's one drop list (README "Headers meshd does not copy").
// A message carrying a connection-specific field is refused before it
// gets here (connectionSpecific); they stay on the list so that it is
// whole. "te" is handled separately: only "te: trailers" is legal and
// gRPC needs it.
func isHopByHop(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "http2-settings":
		return true
	}
	return strings.HasPrefix(name, "x-meshd-")
}

// connectionSpecific reports the header fields RFC 9113 §8.2.2 forbids in
// HTTP/2: a message that carries one is malformed. They are refused, not
// dropped: a proxy that quietly drops "transfer-encoding" from a request
// it passes on has agreed to frame a message two ways, which is how
// request smuggling starts. "te" is the exception, allowed in requests
// with the value "trailers" only; checkRequestFields and
// checkResponseFields deal with it.
func connectionSpecific(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// headerListSize is the size of fields as SETTINGS_MAX_HEADER_LIST_SIZE
// counts it (RFC 9113 §6.5.2): name and value lengths plus 32 per field.
func headerListSize(fields []hpack.HeaderField) uint64 {
	var n uint64
	for _, f := range fields {
		n += uint64(f.Size())
	}
	return n
}

// headerDecodeLimit is how much of a header list the Framer decodes for a
// configured limit (Config.MaxHeaderListSize): four times it. meshd
// enforces the limit itself (requestHeaders, checkResponseFields), so a
// block between the two is read whole and answered with a status that
// says why. The Framer's own limit is a cliff: past it, the next
// CONTINUATION frame is a connection error. On client connections the
// abuse scanner closes a connection whose block is over the limit encoded
// (abuseScanner.checkBlock); decoding further makes sure the scanner,
// which reads ahead, is what decides (ENHANCE_YOUR_CALM
// "headers_too_large"), not the Framer's cliff one frame earlier.
// Backends are told this size (a grpc-go backend told the limit itself
// would reset the stream, INTERNAL_ERROR and no reason); clients are told
// the limit.
func headerDecodeLimit(limit uint32) uint32 {
	return uint32(min(4*uint64(limit), 1<<31-1))
}

// parseContentLength parses a content-length value (RFC 9110 §8.6:
// digits only).
func parseContentLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// contentLength takes the content-length of a header block: -1 when it has
// none; bad is set when its value is not a length or two values disagree.
func contentLength(fields []hpack.HeaderField) (n int64, bad string) {
	n = -1
	for _, f := range fields {
		if f.Name != "content-length" {
			continue
		}
		v, ok := parseContentLength(f.Value)
		if !ok || (n >= 0 && v != n) {
			return -1, fmt.Sprintf("invalid content-length %q", f.Value)
		}
		n = v
	}
	return n, ""
}

// checkRequestFields applies RFC 9113's rules for a well-formed request
// header block (§8.3.1 pseudo-header fields, §8.2.2 connection-specific
// fields, §8.1.1 content-length) and returns the content-length (-1: none)
// or why the request is malformed. The Framer has already refused
// uppercase names, invalid values, unknown or repeated pseudo-header
// fields and pseudo-header fields after regular ones.
func checkRequestFields(f *http2.MetaHeadersFrame) (clen int64, bad string) {
	var method, scheme, path string
	hasPath := false
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":path":
			path, hasPath = hf.Value, true
		case ":authority":
		default:
			// :status, or :protocol, which needs SETTINGS_ENABLE_CONNECT_PROTOCOL.
			return -1, "pseudo-header field " + hf.Name + " in a request"
		}
	}
	switch {
	case method == "":
		return -1, "no :method"
	case method == "CONNECT":
		// No :scheme and :path (§8.5); not gRPC, which the caller answers.
	case scheme == "":
		return -1, "no :scheme"
	case !hasPath || path == "":
		return -1, "empty or missing :path"
	}
	fields := f.RegularFields()
	for _, hf := range fields {
		if connectionSpecific(hf.Name) {
			return -1, "connection-specific header field " + strconv.Quote(hf.Name)
		}
		if hf.Name == "te" && hf.Value != "trailers" {
			return -1, fmt.Sprintf("te: %q (only \"trailers\" is allowed)", hf.Value)
		}
	}
	clen, bad = contentLength(fields)
	if bad == "" && clen > 0 && f.StreamEnded() {
		bad = fmt.Sprintf("content-length %d but no DATA", clen)
	}
	return clen, bad
}

// checkTrailerFields applies RFC 9113's rules to a trailer block, request
// or response: no pseudo-header fields (§8.1), no connection-specific
// fields (§8.2.2).
func checkTrailerFields(f *http2.MetaHeadersFrame) (bad string) {
	if p := f.PseudoFields(); len(p) > 0 {
		return "pseudo-header field " + p[0].Name + " in trailers"
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecific(hf.Name) || hf.Name == "te" {
			return "connection-specific header field " + strconv.Quote(hf.Name) + " in trailers"
		}
	}
	return ""
}

// checkResponseFields is checkRequestFields for a backend's response
// HEADERS (first true) or trailers: exactly one :status, then
// checkTrailerFields' rules, te included (it is a request field), and
// the header list limit meshd enforces (Config.MaxHeaderListSize). It
// returns the content-length (-1: none) or, when meshd refuses the
// block, the status message that says why.
func checkResponseFields(f *http2.MetaHeadersFrame, first bool, limit uint32) (clen int64, refused string) {
	if n := headerListSize(f.Fields); n > uint64(limit) {
		return -1, fmt.Sprintf("meshd: backend response header list of %d bytes is over the limit of %d", n, limit)
	}
	var bad string
	clen = -1
	if first {
		clen, bad = checkResponseHeaders(f)
	} else {
		bad = checkTrailerFields(f)
	}
	if bad != "" {
		return -1, malformedResponse + bad
	}
	return clen, ""
}

// malformedResponse starts the status message of a call whose backend
// broke RFC 9113's rules for a response.
const malformedResponse = "meshd: malformed response from backend: "

// checkResponseHeaders applies RFC 9113's rules to a response's first
// HEADERS and returns its content-length (-1: none) or why it is
// malformed.
func checkResponseHeaders(f *http2.MetaHeadersFrame) (clen int64, bad string) {
	pseudo := f.PseudoFields()
	if len(pseudo) != 1 || pseudo[0].Name != ":status" || pseudo[0].Value == "" {
		return -1, "response HEADERS without exactly one :status"
	}
	fields := f.RegularFields()
	for _, hf := range fields {
		if connectionSpecific(hf.Name) || hf.Name == "te" {
			return -1, "connection-specific header field " + strconv.Quote(hf.Name)
		}
	}
	clen, bad = contentLength(fields)
	if bad == "" && clen > 0 && f.StreamEnded() {
		bad = fmt.Sprintf("content-length %d but no DATA", clen)
	}
	return clen, bad
}

// filterResponse copies the response header or trailer fields to forward to
// the client, dropping hop-by-hop fields. The framer owns fields, so they are
// always copied.
func filterResponse(fields []hpack.HeaderField) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fields))
	for _, f := range fields {
		if isHopByHop(f.Name) || f.Name == "te" {
			continue
		}
		out = append(out, f)
	}
	return out
}

// grpcStatusOf returns the grpc-status carried by fields, or (Unknown,false).
func grpcStatusOf(fields []hpack.HeaderField) (codes.Code, bool) {
	for _, f := range fields {
		if f.Name == "grpc-status" {
			v, err := strconv.ParseUint(f.Value, 10, 32)
			if err != nil {
				return codes.Unknown, false
			}
			return codes.Code(v), true
		}
	}
	return codes.Unknown, false
}

// httpStatusToCode maps a non-gRPC HTTP response status the way gRPC clients
// do (grpc/doc/http-grpc-status-mapping.md).
func httpStatusToCode(s string) codes.Code {
	switch s {
	case "200":
		return codes.Unknown
	case "400":
		return codes.Internal
	case "401":
		return codes.Unauthenticated
	case "403":
		return codes.PermissionDenied
	case "404":
		return codes.Unimplemented
	case "429", "502", "503", "504":
		return codes.Unavailable
	}
	return codes.Unknown
}

// rstToCode maps an RST_STREAM error code to the status a grpc-go client
// reports for it (grpc-go's http2ErrConvTab).
func rstToCode(c http2.ErrCode) codes.Code {
	switch c {
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeEnhanceYourCalm, http2.ErrCodeFlowControl:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// msgTracker follows gRPC message boundaries in one direction of a stream by
// reading only the 5-byte length prefixes as DATA bytes pass; payload bytes
// are skipped without being looked at. Its zero value is at a boundary.
type msgTracker struct {
	remain uint64  // payload bytes left in the current message
	hdr    [5]byte // partial prefix
	hn     uint8   // bytes of hdr filled
	// prefixBytes counts the prefix bytes passed so far, so that a
	// caller can report message payload bytes as the grpc engine does.
	prefixBytes uint64
}

// feed advances over p. It reports the declared length of the first message
// whose prefix exceeds limit, if any; the tracker is then left mid-message
// and must not be fed again.
func (m *msgTracker) feed(p []byte, limit uint64) (uint64, bool) {
	for len(p) > 0 {
		if m.remain > 0 {
			if uint64(len(p)) <= m.remain {
				m.remain -= uint64(len(p))
				return 0, false
			}
			p = p[m.remain:]
			m.remain = 0
			continue
		}
		var n uint64
		if m.hn == 0 && len(p) >= 5 {
			n = uint64(binary.BigEndian.Uint32(p[1:5]))
			p = p[5:]
			m.prefixBytes += 5
		} else {
			k := copy(m.hdr[m.hn:], p)
			m.hn += uint8(k)
			p = p[k:]
			m.prefixBytes += uint64(k)
			if m.hn < 5 {
				return 0, false
			}
			m.hn = 0
			n = uint64(binary.BigEndian.Uint32(m.hdr[1:5]))
		}
		if n > limit {
			return n, true
		}
		m.remain = n
	}
	return 0, false
}

// advance moves over p with no size limit. It follows bytes on their way
// out of meshd, to know whether the peer holds part of a message (see
// inMessage). The common case, p within one message's payload, costs a
// compare and a subtraction; a prefix costs a few more operations.
func (m *msgTracker) advance(p []byte) {
	if n := uint64(len(p)); n <= m.remain {
		m.remain -= n
		return
	}
	m.feed(p, math.MaxUint64)
}

// inMessage reports whether the bytes followed so far end inside a message
// (within its 5-byte prefix or its payload) rather than between two.
func (m *msgTracker) inMessage() bool { return m.remain > 0 || m.hn > 0 }
