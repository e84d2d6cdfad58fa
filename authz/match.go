package authz

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

type pathKind uint8

const (
	pathAny pathKind = iota
	pathExact
	pathPrefix
	pathRegex
)

type headerKind uint8

const (
	headerPresent headerKind = iota
	headerExact
	headerPrefix
	headerSuffix
	headerContains
	headerRegex
)

// compiledPermission is a Permission ready for Decide: regexes compiled,
// methods reduced to "can a POST match", header names and ignore-case
// patterns lower-cased.
type compiledPermission struct {
	action   Action
	never    bool // methods exclude POST, or an unsupported allow
	pathKind pathKind
	path     string
	pathRE   *regexp.Regexp
	headers  []compiledHeader
}

type compiledHeader struct {
	name       string
	kind       headerKind
	value      string // lower-cased when ignoreCase
	re         *regexp.Regexp
	invert     bool
	ignoreCase bool
}

// wholeRegexp compiles expr so that it must match the whole input, as
// Envoy's safe_regex (RE2) does.
func wholeRegexp(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil { // the error names expr as written
		return nil, err
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}

func compilePermission(p Permission) (compiledPermission, error) {
	c := compiledPermission{action: p.Action}
	if p.Action != Allow && p.Action != Deny {
		return c, fmt.Errorf("invalid action %d", p.Action)
	}
	n := 0
	for _, s := range []string{p.PathExact, p.PathPrefix, p.PathRegex} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return c, errors.New("more than one of path_exact, path_prefix, path_regex")
	}
	switch {
	case p.PathExact != "":
		if !strings.HasPrefix(p.PathExact, "/") {
			return c, fmt.Errorf("path_exact %q does not start with \"/\"", p.PathExact)
		}
		c.pathKind, c.path = pathExact, p.PathExact
	case p.PathPrefix != "":
		if !strings.HasPrefix(p.PathPrefix, "/") {
			return c, fmt.Errorf("path_prefix %q does not start with \"/\"", p.PathPrefix)
		}
		c.pathKind, c.path = pathPrefix, p.PathPrefix
	case p.PathRegex != "":
		re, err := wholeRegexp(p.PathRegex)
		if err != nil {
			return c, fmt.Errorf("path_regex: %w", err)
		}
		c.pathKind, c.pathRE = pathRegex, re
	}
	if len(p.Methods) > 0 && !slices.Contains(p.Methods, "POST") {
		c.never = true
	}
	if p.Unsupported != "" && p.Action == Allow {
		c.never = true
	}
	for i, h := range p.Headers {
		ch, err := compileHeader(h)
		if err != nil {
			return c, fmt.Errorf("header %d (%q): %w", i, h.Name, err)
		}
		c.headers = append(c.headers, ch)
	}
	return c, nil
}

func compileHeader(h HeaderRule) (compiledHeader, error) {
	c := compiledHeader{name: strings.ToLower(h.Name), invert: h.Invert, ignoreCase: h.IgnoreCase}
	if c.name == "" {
		return c, errors.New("no name")
	}
	n := 0
	if h.Present {
		n++
		c.kind = headerPresent
	}
	for _, k := range []struct {
		v    string
		kind headerKind
	}{{h.Exact, headerExact}, {h.Prefix, headerPrefix}, {h.Suffix, headerSuffix}, {h.Contains, headerContains}, {h.Regex, headerRegex}} {
		if k.v != "" {
			n++
			c.kind, c.value = k.kind, k.v
		}
	}
	if n != 1 {
		return c, errors.New("want exactly one of present, exact, prefix, suffix, contains, regex")
	}
	switch c.kind {
	case headerRegex:
		re, err := wholeRegexp(h.Regex)
		if err != nil {
			return c, fmt.Errorf("regex: %w", err)
		}
		c.re, c.value, c.ignoreCase = re, "", false // Envoy ignores ignore_case for regex
	case headerPresent:
		c.ignoreCase = false
	default:
		if c.ignoreCase {
			c.value = asciiLower(c.value)
		}
	}
	return c, nil
}

func (p *compiledPermission) match(method string, h Headers) bool {
	if p.never {
		return false
	}
	switch p.pathKind {
	case pathExact:
		if method != p.path {
			return false
		}
	case pathPrefix:
		if !strings.HasPrefix(method, p.path) {
			return false
		}
	case pathRegex:
		if !p.pathRE.MatchString(method) {
			return false
		}
	}
	for i := range p.headers {
		if !p.headers[i].match(h) {
			return false
		}
	}
	return true
}

func (c *compiledHeader) match(h Headers) bool {
	var vals []string
	if h != nil {
		vals = h.Get(c.name)
	}
	if len(vals) == 0 {
		// Envoy: a missing header fails every matcher, inverted or not,
		// except present, whose inversion means "absent".
		return c.kind == headerPresent && c.invert
	}
	if c.kind == headerPresent {
		return !c.invert
	}
	hit := false
	for _, v := range vals {
		if c.matchValue(v) {
			hit = true
			break
		}
	}
	return hit != c.invert
}

func (c *compiledHeader) matchValue(v string) bool {
	switch c.kind {
	case headerExact:
		if c.ignoreCase {
			return len(v) == len(c.value) && asciiEqualLower(v, c.value)
		}
		return v == c.value
	case headerPrefix:
		if c.ignoreCase {
			return len(v) >= len(c.value) && asciiEqualLower(v[:len(c.value)], c.value)
		}
		return strings.HasPrefix(v, c.value)
	case headerSuffix:
		if c.ignoreCase {
			return len(v) >= len(c.value) && asciiEqualLower(v[len(v)-len(c.value):], c.value)
		}
		return strings.HasSuffix(v, c.value)
	case headerContains:
		if c.ignoreCase {
			return asciiContainsLower(v, c.value)
		}
		return strings.Contains(v, c.value)
	case headerRegex:
		return c.re.MatchString(v)
	}
	return false
}

// asciiLower lower-cases ASCII letters only: Envoy's ignore_case is ASCII
// case folding, and a byte-for-byte fold keeps lengths equal, so prefix and
// suffix windows line up.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// asciiEqualLower reports whether s equals lower (already lower-cased) under
// ASCII case folding; len(s) == len(lower).
func asciiEqualLower(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func asciiContainsLower(s, lower string) bool {
	for i := 0; i+len(lower) <= len(s); i++ {
		if asciiEqualLower(s[i:i+len(lower)], lower) {
			return true
		}
	}
	return false
}
