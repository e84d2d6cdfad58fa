package authz_test

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/authz"
)

// FuzzDecide compiles a rule from fuzzed patterns and decides a fuzzed call:
// Compile either fails or gives a table whose Decide does not panic, gives a
// known reason, and for IgnoreCase rules (not regex) is blind to ASCII case.
func FuzzDecide(f *testing.F) {
	f.Add("/grpc.testing.TestService/.*", "blu", uint8(1), false, true, "/grpc.testing.TestService/UnaryCall", "BLUE")
	f.Add("(", "x", uint8(0), true, false, "/a", "")
	f.Add(`/a|/b`, "", uint8(5), false, false, "/b", "ab")
	f.Fuzz(func(t *testing.T, pathRegex, pattern string, kind uint8, invert, ignoreCase bool, method, value string) {
		h := authz.HeaderRule{Name: "x-h", Invert: invert, IgnoreCase: ignoreCase}
		switch kind % 6 {
		case 0:
			h.Present = true
		case 1:
			h.Exact = pattern
		case 2:
			h.Prefix = pattern
		case 3:
			h.Suffix = pattern
		case 4:
			h.Contains = pattern
		case 5:
			h.Regex = pattern
		}
		rules := []authz.Rule{l7("r", "web", authz.Permission{Action: authz.Allow, PathRegex: pathRegex, Headers: []authz.HeaderRule{h}})}
		tab, err := authz.Compile("api", rules, authz.Deny)
		if err != nil {
			return
		}
		d := tab.Decide("web", method, md("x-h", value))
		switch d.Reason {
		case authz.ReasonPermission:
			if !d.Allow || d.Permission != 0 {
				t.Fatalf("permission decision %+v", d)
			}
		case authz.ReasonDefault:
			if d.Allow || d.Permission != -1 {
				t.Fatalf("default decision %+v", d)
			}
		default:
			t.Fatalf("reason %q", d.Reason)
		}
		if ignoreCase && kind%6 >= 1 && kind%6 <= 4 {
			for _, v := range []string{strings.ToUpper(value), strings.ToLower(value)} {
				if !isASCII(value) {
					break
				}
				if d2 := tab.Decide("web", method, md("x-h", v)); d2 != d {
					t.Fatalf("ignore_case: %q gives %+v, %q gives %+v", value, d, v, d2)
				}
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
