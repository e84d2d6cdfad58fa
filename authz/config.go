package authz

import (
	"fmt"

	"github.com/meshd/meshd/config"
)

// FromConfig converts the config's own intentions (mesh.intentions, for
// identity files) to rules, in file order; Compile sorts them by
// precedence as Consul would. Each rule's ID is its config path.
func FromConfig(ins []config.Intention) []Rule {
	rules := make([]Rule, len(ins))
	for i, in := range ins {
		r := Rule{Source: in.Source, Action: ActionOf(in.Action), ID: fmt.Sprintf("mesh.intentions[%d]", i)}
		for _, p := range in.Permissions {
			perm := Permission{Action: ActionOf(p.Action), PathExact: p.HTTP.PathExact, PathPrefix: p.HTTP.PathPrefix,
				PathRegex: p.HTTP.PathRegex, Methods: p.HTTP.Methods}
			for _, h := range p.HTTP.Header {
				perm.Headers = append(perm.Headers, HeaderRule{Name: h.Name, Present: h.Present, Exact: h.Exact, Prefix: h.Prefix,
					Suffix: h.Suffix, Contains: h.Contains, Regex: h.Regex, Invert: h.Invert, IgnoreCase: h.IgnoreCase})
			}
			r.Permissions = append(r.Permissions, perm)
		}
		rules[i] = r
	}
	return rules
}

// ActionOf reads a config action ("allow" or "deny"); anything but
// "allow" denies, so a typo the validator missed fails closed.
func ActionOf(s string) Action {
	if s == config.ActionAllow {
		return Allow
	}
	return Deny
}
