package grpcweb

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
)

// Content types. A request's type picks the response's: binary or text,
// with or without +proto.
const (
	ctWeb      = "application/grpc-web"
	ctWebText  = "application/grpc-web-text"
	ctNative   = "application/grpc"
	flagTrail  = 0x80 // the trailer frame
	flagCompr  = 0x01 // a compressed message
	prefixSize = 5
)

// mode is what a request's content type says about its encoding.
type mode struct {
	text   bool   // base64 body (application/grpc-web-text)
	suffix string // "", "+proto", "+json"...
}

// parseContentType reads a gRPC-Web content type. ok false: it is not one.
func parseContentType(ct string) (m mode, ok bool) {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.ToLower(strings.TrimSpace(ct))
	switch {
	case strings.HasPrefix(ct, ctWebText):
		m.text, m.suffix = true, ct[len(ctWebText):]
	case strings.HasPrefix(ct, ctWeb):
		m.suffix = ct[len(ctWeb):]
	default:
		return m, false
	}
	if m.suffix != "" && m.suffix[0] != '+' {
		return m, false
	}
	return m, true
}

// native is the content type of the translated call.
func (m mode) native() string { return ctNative + m.suffix }

// web is the content type of the response.
func (m mode) web() string {
	if m.text {
		return ctWebText + m.suffix
	}
	return ctWeb + m.suffix
}

// Errors of a request body.
var (
	errTruncated = errors.New("truncated message frame")
	errBadBase64 = errors.New("malformed base64")
)

// decodeText decodes an application/grpc-web-text body: base64 (standard
// alphabet, padded), possibly several padded chunks one after the other,
// as clients that encode each message separately send them.
func decodeText(src []byte) ([]byte, error) {
	src = bytes.TrimRight(src, "\r\n")
	if len(src)%4 != 0 {
		return nil, fmt.Errorf("%w: %d characters, not a multiple of 4 (truncated?)", errBadBase64, len(src))
	}
	dst := make([]byte, base64.StdEncoding.DecodedLen(len(src)))
	n := 0
	for len(src) > 0 {
		end := len(src)
		if i := bytes.IndexByte(src, '='); i >= 0 {
			end = (i/4 + 1) * 4 // the padded group ends this chunk
		}
		k, err := base64.StdEncoding.Decode(dst[n:], src[:end])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBadBase64, err)
		}
		n += k
		src = src[end:]
	}
	return dst[:n], nil
}

// countMessages checks that body is a sequence of whole message frames
// (flag 0 or 1, no trailer frame) and counts them.
func countMessages(body []byte) (int, error) {
	n := 0
	for len(body) > 0 {
		if len(body) < prefixSize {
			return n, fmt.Errorf("%w: %d bytes left, a frame prefix is 5", errTruncated, len(body))
		}
		if flag := body[0]; flag&^flagCompr != 0 {
			return n, fmt.Errorf("frame flag 0x%02x in a request (want 0 or 1)", flag)
		}
		size := binary.BigEndian.Uint32(body[1:prefixSize])
		if uint64(len(body)-prefixSize) < uint64(size) {
			return n, fmt.Errorf("%w: message of %d bytes, %d present", errTruncated, size, len(body)-prefixSize)
		}
		body = body[prefixSize+int(size):]
		n++
	}
	return n, nil
}

// appendTrailerFrame appends the trailer frame carrying tr: a prefix with
// flag 0x80, then "name: value\r\n" lines, lowercase names, grpc-status
// and grpc-message first.
func appendTrailerFrame(dst []byte, tr http.Header) []byte {
	start := len(dst)
	dst = append(dst, flagTrail, 0, 0, 0, 0)
	keys := make([]string, 0, len(tr))
	for k := range tr {
		keys = append(keys, strings.ToLower(k))
	}
	rank := func(k string) int {
		switch k {
		case "grpc-status":
			return 0
		case "grpc-message":
			return 1
		}
		return 2
	}
	sort.Slice(keys, func(i, j int) bool {
		if ri, rj := rank(keys[i]), rank(keys[j]); ri != rj {
			return ri < rj
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		for _, v := range tr.Values(k) {
			dst = append(dst, k...)
			dst = append(dst, ": "...)
			dst = append(dst, v...)
			dst = append(dst, "\r\n"...)
		}
	}
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-prefixSize))
	return dst
}
