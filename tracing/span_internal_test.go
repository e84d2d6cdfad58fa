package tracing

import "testing"

func TestSplitMethod(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, name, svc, method string }{
		{"/pkg.v1.Svc/Do", "pkg.v1.Svc/Do", "pkg.v1.Svc", "Do"},
		{"pkg.Svc/Do", "pkg.Svc/Do", "pkg.Svc", "Do"},
		{"/a/b/Do", "a/b/Do", "a/b", "Do"},
		{"/pkg.Svc/", "pkg.Svc/", "", ""},
		{"//Do", "/Do", "", ""},
		{"/nomethod", "nomethod", "", ""},
		{"", "", "", ""},
	} {
		name, svc, method := splitMethod(tc.in)
		if name != tc.name || svc != tc.svc || method != tc.method {
			t.Errorf("splitMethod(%q) = %q, %q, %q; want %q, %q, %q", tc.in, name, svc, method, tc.name, tc.svc, tc.method)
		}
	}
}

func TestSplitHostPort(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"10.0.0.1:8080", "10.0.0.1", 8080},
		{"[::1]:443", "::1", 443},
		{"users.svc:9000", "users.svc", 9000},
		{"users.svc", "users.svc", 0},
		{"10.0.0.1:http", "10.0.0.1:http", 0},
		{"10.0.0.1:70000", "10.0.0.1:70000", 0},
		{"", "", 0},
	} {
		host, port := splitHostPort(tc.in)
		if host != tc.host || port != tc.port {
			t.Errorf("splitHostPort(%q) = %q, %d; want %q, %d", tc.in, host, port, tc.host, tc.port)
		}
	}
}
