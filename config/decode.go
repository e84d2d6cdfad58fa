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
	indexLines(&root, "", cfg.locs)

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var errs Errors
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, Errors{syntaxError(file, err)}
		}
		for _, msg := range te.Errors {
			errs = append(errs, typeError(file, msg))
		}
	}
	// A second document in the same file is almost always a mistake (a
	// pasted fragment); refuse it rather than silently ignoring it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		errs = append(errs, &Error{File: file, Line: extra.Line, Msg: "more than one YAML document"})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	cfg.File = file
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	return cfg, nil
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// typeError turns one of yaml.v3's "line N: ..." strings into an Error.
func typeError(file, msg string) *Error {
	e := &Error{File: file, Msg: msg}
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = m[2]
	}
	// yaml.v3 says "field x not found in type config.Route"; say it the way
	// an operator reads it.
	if f, t, ok := strings.Cut(strings.TrimPrefix(e.Msg, "field "), " not found in type config."); ok && strings.HasPrefix(e.Msg, "field ") {
		e.Field = f
		e.Msg = fmt.Sprintf("unknown field %q in %s", f, strings.ToLower(t))
	}
	return e
}

func syntaxError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: file, Msg: msg}
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = m[2]
	}
	return e
}

// indexLines records the line of every mapping value and sequence item under
// its field path, so validation errors can point at the right line.
func indexLines(n *yaml.Node, path string, locs map[string]int) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			indexLines(c, path, locs)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			locs[p] = k.Line
			indexLines(v, p, locs)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			locs[p] = c.Line
			indexLines(c, p, locs)
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

// UnmarshalYAML accepts "host:port" or {address, weight}.
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
			case "weight":
				w, err := strconv.ParseUint(v.Value, 10, 32)
				if err != nil {
					errs = append(errs, fmt.Sprintf("line %d: weight must be a positive integer, got %q", v.Line, v.Value))
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
	return lineErr(n, "endpoint must be \"host:port\" or {address: host:port, weight: N}")
}

func lineErr(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
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
