package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"gopkg.in/yaml.v3"
)

// Error is one problem in a config file, located by line and field path.
type Error struct {
	File  string // path of the file, "" for in-memory input
	Line  int    // 1-based line, 0 when unknown
	Field string // dotted field path, e.g. "routes[2].cluster"
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteByte(':')
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file. It is returned as a single
// error; use errors.As to get at the list.
type Errors []*Error

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Load reads, decodes, validates and defaults the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes data strictly, validates it and fills in defaults. file names
// the source in error messages. The returned error, if any, is an Errors
// listing every problem found.
func Parse(data []byte, file string) (*Config, error) {
	cfg := &Config{File: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{syntaxError(file, err)}
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return nil, Errors{{File: file, Msg: "empty config"}}
	}
	cfg.locs = make(map[string]int)
	cfg.at = make(map[pos]string)
	indexLines(&root, "", cfg.locs, cfg.at)

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var errs Errors
	// onlyUnknown: every decode problem is an unknown key. The rest of the
	// file then decoded as written, so validating it too lets an operator
	// fix every problem in one pass; after a type error it would report
	// zero values the file never had.
	onlyUnknown := true
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, Errors{syntaxError(file, err)}
		}
		for _, msg := range te.Errors {
			e := cfg.typeError(msg)
			if !strings.HasPrefix(e.Msg, "unknown field ") {
				onlyUnknown = false
			}
			errs = append(errs, e)
		}
	}
	// A second document in the same file is almost always a mistake (a
	// pasted fragment); refuse it rather than silently ignoring it, also
	// when that fragment is not even valid YAML.
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		errs = append(errs, &Error{File: file, Line: extra.Line, Msg: "more than one YAML document"})
	case !errors.Is(err, io.EOF):
		errs = append(errs, syntaxError(file, err))
	}
	if len(errs) > 0 {
		if onlyUnknown {
			cfg.File = file
			var verrs Errors
			if errors.As(cfg.Validate(), &verrs) {
				errs = append(errs, verrs...)
			}
		}
		return nil, errs
	}
	cfg.File = file
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	return cfg, nil
}

// lineRE parses yaml.v3's "line N: msg" and lineErr's "line N: column C:
// msg".
var lineRE = regexp.MustCompile(`^line (\d+): (?:column (\d+): )?(.*)$`)

// typeError turns one of yaml.v3's "line N: ..." strings into an Error and
// names the field it is about, so an operator is told the field path and not
// only a line.
func (c *Config) typeError(msg string) *Error {
	e := &Error{File: c.File, Msg: msg}
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return e
	}
	e.Line, _ = strconv.Atoi(m[1])
	e.Msg = m[3]
	// yaml.v3 says "field x not found in type config.Route"; say it the way
	// an operator reads it.
	if f, t, ok := strings.Cut(strings.TrimPrefix(e.Msg, "field "), " not found in type config."); ok && strings.HasPrefix(e.Msg, "field ") {
		e.Field = c.keyPath(e.Line, f)
		e.Msg = fmt.Sprintf("unknown field %q in %s", f, strings.ToLower(t))
		return e
	}
	// Errors from our UnmarshalYAML methods carry the value's column, which
	// tells apart values sharing a line (flow style: [UNAVAILABLE, NOPE]).
	// yaml.v3's own ("cannot unmarshal !!str into int") give only a line:
	// name the innermost field that holds every value on it.
	if m[2] != "" {
		col, _ := strconv.Atoi(m[2])
		e.Field = c.at[pos{e.Line, col}]
	} else {
		e.Field = c.lineField(e.Line)
	}
	return e
}

// lineField is the innermost field path enclosing every value that starts
// on line, or "".
func (c *Config) lineField(line int) string {
	field, first := "", true
	for at, p := range c.at {
		if at.line != line {
			continue
		}
		if first {
			field, first = p, false
			continue
		}
		field = commonPath(field, p)
	}
	return field
}

// commonPath is the longest field path both a and b are inside of
// ("routes[1].match" for "routes[1].match.method" and
// "routes[1].match.headers[0]").
func commonPath(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	for ; n > 0; n-- {
		if (n == len(a) || a[n] == '.' || a[n] == '[') && (n == len(b) || b[n] == '.' || b[n] == '[') {
			return a[:n]
		}
	}
	return ""
}

// keyPath is the field path of key name on line, or name itself when the
// key was not indexed. Candidates are compared so the answer is
// deterministic even when one line holds the same key twice.
func (c *Config) keyPath(line int, name string) string {
	best := ""
	for p, l := range c.locs {
		if l != line || (p != name && !strings.HasSuffix(p, "."+name)) {
			continue
		}
		if best == "" || p < best {
			best = p
		}
	}
	if best == "" {
		return name
	}
	return best
}

func syntaxError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: file, Msg: msg}
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = m[3]
	}
	return e
}

// pos is a node's line and column (1-based).
type pos struct{ line, col int }

// indexLines records the line of every mapping value and sequence item under
// its field path, so validation errors can point at the right line, and the
// field path of every value node by position, so decoding errors (which know
// only a node) can name their field.
func indexLines(n *yaml.Node, path string, locs map[string]int, at map[pos]string) {
	if path != "" {
		at[pos{n.Line, n.Column}] = path
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			indexLines(c, path, locs, at)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			locs[p] = k.Line
			indexLines(v, p, locs, at)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			locs[p] = c.Line
			indexLines(c, p, locs, at)
		}
	}
	if _, ok := locs[path]; !ok && path != "" {
		locs[path] = n.Line
	}
}

// line returns the line of field path p, or of its nearest located parent.
func (c *Config) line(p string) int {
	for p != "" {
		if l, ok := c.locs[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// UnmarshalYAML decodes a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineErr(n, "duration must be a string like 500ms or 2s")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return lineErr(n, fmt.Sprintf("invalid duration %q (use Go syntax: 500ms, 2s, 1m)", n.Value))
	}
	if v < 0 {
		return lineErr(n, fmt.Sprintf("negative duration %q", n.Value))
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in Go syntax (for /config_dump).
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Workers is the workers key: 0 for auto, else a fixed thread count.
type Workers int

// maxWorkers bounds a fixed workers count: far above any machine meshd
// runs on, low enough that a typo is caught.
const maxWorkers = 1024

// UnmarshalYAML decodes auto or a count from 1 to maxWorkers.
func (w *Workers) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineErr(n, "workers must be auto or a number of threads")
	}
	if n.Value == "auto" {
		*w = 0
		return nil
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < 0 || v > maxWorkers {
		return lineErr(n, fmt.Sprintf("workers must be auto or a number of threads from 1 to %d, got %q", maxWorkers, n.Value))
	}
	*w = Workers(v)
	return nil
}

// MarshalYAML writes auto for 0 (for /config_dump).
func (w Workers) MarshalYAML() (any, error) {
	if w == 0 {
		return "auto", nil
	}
	return int(w), nil
}

// UnmarshalYAML decodes a status code name such as UNAVAILABLE.
func (c *Code) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineErr(n, "status code must be a name like UNAVAILABLE")
	}
	code, ok := codeByName(n.Value)
	if !ok {
		return lineErr(n, fmt.Sprintf("unknown gRPC status code %q (use names like UNAVAILABLE, DEADLINE_EXCEEDED)", n.Value))
	}
	*c = Code(code)
	return nil
}

// MarshalYAML writes the code's name.
func (c Code) MarshalYAML() (any, error) { return codeName(codes.Code(c)), nil }

// UnmarshalYAML accepts "host:port" or {address, weight, zone}.
func (e *EndpointSpec) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		e.Address = n.Value
		return nil
	case yaml.MappingNode:
		// Decoded by hand: a nested Decode would not be strict about
		// unknown keys.
		var errs []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "address":
				e.Address = v.Value
			case "zone":
				e.Zone = v.Value
			case "weight":
				w, err := strconv.ParseUint(v.Value, 10, 32)
				if err != nil {
					errs = append(errs, fmt.Sprintf("line %d: column %d: weight must be a positive integer, got %q", v.Line, v.Column, v.Value))
					continue
				}
				e.Weight = uint32(w)
			default:
				errs = append(errs, fmt.Sprintf("line %d: field %s not found in type config.EndpointSpec", k.Line, k.Value))
			}
		}
		if len(errs) > 0 {
			return &yaml.TypeError{Errors: errs}
		}
		return nil
	}
	return lineErr(n, "endpoint must be \"host:port\" or {address: host:port, weight: N, zone: Z}")
}

func lineErr(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: column %d: %s", n.Line, n.Column, msg)}}
}

// codeByName maps the canonical upper-case names to codes.
func codeByName(s string) (codes.Code, bool) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if codeName(c) == s {
			return c, true
		}
	}
	return 0, false
}

// codeName is the canonical upper-snake name of a code ("DEADLINE_EXCEEDED").
func codeName(c codes.Code) string {
	switch c {
	case codes.OK:
		return "OK"
	case codes.Canceled:
		return "CANCELLED"
	case codes.Unknown:
		return "UNKNOWN"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.Aborted:
		return "ABORTED"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.Unimplemented:
		return "UNIMPLEMENTED"
	case codes.Internal:
		return "INTERNAL"
	case codes.Unavailable:
		return "UNAVAILABLE"
	case codes.DataLoss:
		return "DATA_LOSS"
	case codes.Unauthenticated:
		return "UNAUTHENTICATED"
	}
	return "CODE_" + strconv.Itoa(int(c))
}

// CodeName is the canonical name of a gRPC code as written in configs.
func CodeName(c codes.Code) string { return codeName(c) }
