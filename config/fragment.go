package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Fragment is the part of a config a fleet shares through a Consul KV key
// (consul.config_key): routes and clusters, nothing else. Listeners, the
// admin port and the Consul address stay in each instance's own file, so a
// shared value cannot move a port or cut an instance off its agent.
type Fragment struct {
	// Routes are matched before the file's routes.
	Routes []Route `yaml:"routes"`
	// Clusters are added to the file's clusters.
	Clusters []Cluster `yaml:"clusters"`

	// Source names where the fragment came from ("consul:meshd/routes");
	// it prefixes error messages.
	Source string `yaml:"-"`
	locs   map[string]int
}

// ParseFragment decodes data strictly: an unknown key, including any
// top-level key other than routes and clusters, is an error with its line.
// Empty data is an empty fragment. It does not validate; Merge validates
// the fragment together with the file it joins.
func ParseFragment(data []byte, source string) (*Fragment, error) {
	f := &Fragment{Source: source, locs: map[string]int{}}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{syntaxError(source, err)}
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return f, nil
	}
	// A scratch Config lends its error helpers (field paths by line).
	scratch := &Config{File: source, locs: f.locs, at: map[pos]string{}}
	indexLines(&root, "", scratch.locs, scratch.at)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var errs Errors
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, Errors{syntaxError(source, err)}
		}
		for _, msg := range te.Errors {
			errs = append(errs, scratch.typeError(msg))
		}
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		errs = append(errs, &Error{File: source, Line: extra.Line, Msg: "more than one YAML document"})
	case !errors.Is(err, io.EOF):
		errs = append(errs, syntaxError(source, err))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return f, nil
}

// Merge returns the config meshd runs when base (a loaded, valid file) is
// joined by f: f's routes first, then base's, so a catch-all route in the
// file stays a fallback; base's clusters, then f's. The result is validated
// as a whole and defaulted; errors name the fragment's source and line for
// the fragment's entries and the file's for the file's. base is not
// modified. The result shares f's values, which get their defaults filled
// in: parse the fragment afresh for each Merge.
func Merge(base *Config, f *Fragment) (*Config, error) {
	m := *base
	m.locs, m.at = nil, nil
	m.Listeners = append([]Listener(nil), base.Listeners...)
	m.Routes = append(append(make([]Route, 0, len(f.Routes)+len(base.Routes)), f.Routes...), base.Routes...)
	for i := range f.Routes {
		if m.Routes[i].Source == "" {
			m.Routes[i].Source = f.Source
		}
	}
	m.Clusters = append(append(make([]Cluster, 0, len(base.Clusters)+len(f.Clusters)), base.Clusters...), f.Clusters...)
	if err := m.Validate(); err != nil {
		var es Errors
		if errors.As(err, &es) {
			for _, e := range es {
				locateMerged(e, base, f)
			}
		}
		return nil, err
	}
	m.applyDefaults()
	return &m, nil
}

var indexedRE = regexp.MustCompile(`^(routes|clusters)\[(\d+)\](.*)$`)

// locateMerged points an error about the merged config at the entry's own
// source: the fragment or the file, with the index it has there.
func locateMerged(e *Error, base *Config, f *Fragment) {
	e.File, e.Line = base.File, base.line(e.Field)
	m := indexedRE.FindStringSubmatch(e.Field)
	if m == nil {
		return
	}
	i, _ := strconv.Atoi(m[2])
	inFragment := false
	switch m[1] {
	case "routes":
		if i < len(f.Routes) {
			inFragment = true
			break
		}
		i -= len(f.Routes)
		// The fragment's routes come first, so a name both define is
		// reported on the file's route; it is the fragment's that is new.
		if m[3] == ".name" && strings.HasPrefix(e.Msg, "duplicate route name") {
			for j, r := range f.Routes {
				if r.Name == base.Routes[i].Name {
					inFragment, i = true, j
					e.Msg += " (the file defines it too)"
					break
				}
			}
		}
	case "clusters":
		if i >= len(base.Clusters) {
			inFragment = true
			i -= len(base.Clusters)
		}
	}
	e.Field = fmt.Sprintf("%s[%d]%s", m[1], i, m[3])
	if inFragment {
		scratch := &Config{locs: f.locs}
		e.File, e.Line = f.Source, scratch.line(e.Field)
		return
	}
	e.Line = base.line(e.Field)
}
