package grpcweb

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"
)

func TestParseContentType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ct           string
		ok, text     bool
		native, resp string
	}{
		{"application/grpc-web", true, false, "application/grpc", "application/grpc-web"},
		{"application/grpc-web+proto", true, false, "application/grpc+proto", "application/grpc-web+proto"},
		{"application/grpc-web-text", true, true, "application/grpc", "application/grpc-web-text"},
		{"application/grpc-web-text+proto; charset=utf-8", true, true, "application/grpc+proto", "application/grpc-web-text+proto"},
		{"Application/GRPC-Web", true, false, "application/grpc", "application/grpc-web"},
		{"application/grpc", false, false, "", ""},
		{"application/grpc-webx", false, false, "", ""},
		{"text/plain", false, false, "", ""},
	} {
		m, ok := parseContentType(tc.ct)
		if ok != tc.ok || (ok && (m.text != tc.text || m.native() != tc.native || m.web() != tc.resp)) {
			t.Errorf("%q: ok %v text %v native %q web %q", tc.ct, ok, m.text, m.native(), m.web())
		}
	}
}

func TestDecodeText(t *testing.T) {
	t.Parallel()
	a, b := []byte("\x00\x00\x00\x00\x01x"), []byte("\x00\x00\x00\x00\x02yz")
	enc := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		name, in string
		want     string
		err      error
	}{
		{"one chunk", enc(append(append([]byte{}, a...), b...)), string(a) + string(b), nil},
		{"padded chunks", enc(a) + enc(b), string(a) + string(b), nil},
		{"empty", "", "", nil},
		{"truncated", enc(a)[:5], "", errBadBase64},
		{"bad alphabet", "ab!d", "", errBadBase64},
	} {
		got, err := decodeText([]byte(tc.in))
		if !errors.Is(err, tc.err) || (err == nil && string(got) != tc.want) {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
	}
}

func TestCountMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []byte
		n    int
		bad  bool
	}{
		{"none", nil, 0, false},
		{"one empty", []byte{0, 0, 0, 0, 0}, 1, false},
		{"two", []byte{0, 0, 0, 0, 1, 'a', 1, 0, 0, 0, 0}, 2, false},
		{"short prefix", []byte{0, 0}, 0, true},
		{"short message", []byte{0, 0, 0, 0, 9, 'a'}, 0, true},
		{"trailer flag", []byte{0x80, 0, 0, 0, 0}, 0, true},
		{"unknown flag", []byte{0x02, 0, 0, 0, 0}, 0, true},
	} {
		n, err := countMessages(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && n != tc.n) {
			t.Errorf("%s: %d, %v", tc.name, n, err)
		}
	}
}

func TestTrailerFrame(t *testing.T) {
	t.Parallel()
	got := appendTrailerFrame(nil, http.Header{"X-B": {"2"}, "Grpc-Message": {"oops"}, "Grpc-Status": {"5"}, "A-Md": {"1", "3"}})
	body := "grpc-status: 5\r\ngrpc-message: oops\r\na-md: 1\r\na-md: 3\r\nx-b: 2\r\n"
	want := append([]byte{0x80, 0, 0, 0, byte(len(body))}, body...)
	if string(got) != string(want) {
		t.Fatalf("trailer frame\n got %q\nwant %q", got, want)
	}
}

func TestAllowsOrigin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		allow        []string
		origin, host string
		ok           bool
	}{
		{[]string{"*"}, "https://any.example", "api:443", true},
		{[]string{"https://app.example"}, "https://app.example", "api", true},
		{[]string{"https://app.example/"}, "https://APP.example", "api", true},
		{[]string{"https://app.example"}, "https://evil.example", "api", false},
		{[]string{"https://app.example"}, "http://app.example", "api", false},
		{nil, "http://api:8080", "api:8080", true}, // same origin
		{nil, "http://api:8081", "api:8080", false},
		{nil, "null", "api", false},
	} {
		if got := allowsOrigin(tc.allow, tc.origin, tc.host); got != tc.ok {
			t.Errorf("allow %v origin %q host %q: %v", tc.allow, tc.origin, tc.host, got)
		}
	}
}

func TestEncodeGRPCMessage(t *testing.T) {
	t.Parallel()
	if got := encodeGRPCMessage("50% off\né"); got != "50%25 off%0A%C3%A9" {
		t.Fatalf("%q", got)
	}
}
