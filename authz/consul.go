package authz

import (
	"github.com/hashicorp/consul/api"
)

// FromConsul converts the intentions of one destination, as
// Connect().IntentionMatch returns them (in precedence order), to rules,
// keeping their order and Precedence. It fails closed where meshd cannot
// follow Consul:
//
//   - An intention whose source meshd can never see as a caller's identity
//     (another namespace, partition, peer or sameness group, or a source
//     type other than consul) is left out: meshd identifies callers by
//     service name in the default namespace, so such a rule could only
//     ever wrongly match a local service of the same name.
//   - An action other than "allow" is Deny.
//   - A permission that requires a JWT is marked Unsupported: as an allow it
//     never matches, as a deny it matches on its path, method and headers.
//
// A rule's ID is the intention's ID, or "source->destination" for
// intentions defined by a service-intentions config entry, which have none.
func FromConsul(ints []*api.Intention) []Rule {
	var rules []Rule
	for _, in := range ints {
		if in == nil || !localSource(in) {
			continue
		}
		r := Rule{
			Source:     in.SourceName,
			Action:     consulAction(in.Action),
			Precedence: in.Precedence,
			ID:         in.ID,
		}
		if r.ID == "" {
			r.ID = in.SourceName + "->" + in.DestinationName
		}
		for _, p := range in.Permissions {
			if p == nil {
				continue
			}
			perm := Permission{Action: consulAction(p.Action)}
			if p.JWT != nil && len(p.JWT.Providers) > 0 {
				perm.Unsupported = "jwt"
			}
			if h := p.HTTP; h != nil {
				perm.PathExact, perm.PathPrefix, perm.PathRegex = h.PathExact, h.PathPrefix, h.PathRegex
				if len(h.Methods) > 0 {
					perm.Methods = append([]string(nil), h.Methods...)
				}
				for _, hh := range h.Header {
					perm.Headers = append(perm.Headers, HeaderRule{
						Name:       hh.Name,
						Present:    hh.Present,
						Exact:      hh.Exact,
						Prefix:     hh.Prefix,
						Suffix:     hh.Suffix,
						Contains:   hh.Contains,
						Regex:      hh.Regex,
						Invert:     hh.Invert,
						IgnoreCase: hh.IgnoreCase,
					})
				}
			}
			r.Permissions = append(r.Permissions, perm)
		}
		rules = append(rules, r)
	}
	return rules
}

func consulAction(a api.IntentionAction) Action {
	if a == api.IntentionActionAllow {
		return Allow
	}
	return Deny
}

// localSource reports whether the intention's source can be a caller meshd
// identifies: a service name (or "*") in the default namespace and
// partition of this cluster.
func localSource(in *api.Intention) bool {
	if in.SourceType != "" && in.SourceType != api.IntentionSourceConsul {
		return false
	}
	if in.SourcePeer != "" || in.SourceSamenessGroup != "" {
		return false
	}
	if in.SourcePartition != "" && in.SourcePartition != "default" {
		return false
	}
	switch in.SourceNS {
	case "", "default":
		return in.SourceName != ""
	case Wildcard:
		return in.SourceName == Wildcard
	}
	return false
}
