package config

import (
	"fmt"
	"regexp"
	"strings"
)

// Mesh identities and modes.
const (
	// IdentityConsulConnect takes the leaf certificate and CA roots from
	// Consul Connect's CA, rotated live, and intentions from Consul.
	IdentityConsulConnect = "consul_connect"
	// IdentityFiles reads cert_file, key_file and ca_file (re-read on
	// change) and authorizes with the config's own intentions.
	IdentityFiles = "files"

	MeshTLSStrict     = "strict"
	MeshTLSPermissive = "permissive"

	ActionAllow = "allow"
	ActionDeny  = "deny"
)

// Mesh is this workload's service-mesh identity and the authorization of
// the calls its mesh listeners receive.
type Mesh struct {
	// Service is this workload's service name: its identity
	// (spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>) and the
	// destination whose intentions authorize inbound calls. Required.
	Service string `yaml:"service"`
	// Identity is where the certificate comes from: consul_connect
	// (default) or files.
	Identity string `yaml:"identity"`
	// DefaultAction applies when no intention matches a call: deny
	// (default) or allow.
	DefaultAction string `yaml:"default_action"`
	// CertFile, KeyFile and CAFile are the SPIFFE leaf (with its chain),
	// its key and the trust bundle, for identity: files (SPIRE helpers,
	// cert-manager). Re-read when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// Intentions are the local authorization rules for identity: files, in
	// Consul's service-intentions form (with consul_connect they come from
	// Consul and this list must be empty). They reload with the file.
	Intentions []Intention `yaml:"intentions"`
}

// Intention is one source's rule toward this service, as in Consul's
// service-intentions config entry: either an L4 Action or L7 Permissions.
type Intention struct {
	// Source is a service name or "*" (any caller, unauthenticated ones
	// included).
	Source string `yaml:"source"`
	// Action is allow or deny (L4); exclusive with Permissions.
	Action string `yaml:"action"`
	// Permissions are tried in order; the first that matches decides. No
	// match: mesh.default_action.
	Permissions []IntentionPermission `yaml:"permissions"`
}

// IntentionPermission is one L7 rule: all its conditions must hold.
type IntentionPermission struct {
	Action string `yaml:"action"`
	// HTTP conditions on the call: the path is the gRPC method,
	// "/pkg.Service/Method"; the HTTP method is always POST.
	HTTP IntentionHTTP `yaml:"http"`
}

// IntentionHTTP is a permission's request conditions.
type IntentionHTTP struct {
	PathExact  string            `yaml:"path_exact"`
	PathPrefix string            `yaml:"path_prefix"`
	PathRegex  string            `yaml:"path_regex"`
	Methods    []string          `yaml:"methods"`
	Header     []IntentionHeader `yaml:"header"`
}

// IntentionHeader is a metadata condition of a permission. Exactly one of
// Present, Exact, Prefix, Suffix, Contains and Regex.
type IntentionHeader struct {
	Name       string `yaml:"name"`
	Present    bool   `yaml:"present"`
	Exact      string `yaml:"exact"`
	Prefix     string `yaml:"prefix"`
	Suffix     string `yaml:"suffix"`
	Contains   string `yaml:"contains"`
	Regex      string `yaml:"regex"`
	Invert     bool   `yaml:"invert"`
	IgnoreCase bool   `yaml:"ignore_case"`
}

// ClusterMeshTLS dials a cluster's endpoints (other meshd sidecars) with
// this workload's mesh identity.
type ClusterMeshTLS struct {
	// Service is the identity the endpoints must present. Required.
	Service string `yaml:"service"`
}

// validServiceName is what Consul accepts as a service name and what a
// SPIFFE path segment can carry.
var validServiceName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$`)

// mesh validates the mesh section and the keys that need it.
func (v *validator) mesh() {
	m := v.c.Mesh
	on := m != nil
	for i, l := range v.c.Listeners {
		p := fmt.Sprintf("listeners[%d].mesh_tls", i)
		switch l.MeshTLS {
		case "":
			continue
		case MeshTLSStrict, MeshTLSPermissive:
		default:
			v.add(p, "want strict or permissive, got %q", l.MeshTLS)
		}
		if !on {
			v.add(p, "needs a mesh section (mesh.service and its identity)")
		}
		if l.TLS != nil {
			v.add(p, "cannot be combined with tls: the mesh identity is the listener's certificate")
		}
	}
	for i, c := range v.c.Clusters {
		if c.MeshTLS == nil {
			continue
		}
		p := fmt.Sprintf("clusters[%d].mesh_tls", i)
		if !on {
			v.add(p, "needs a mesh section (mesh.service and its identity)")
		}
		if !validServiceName.MatchString(c.MeshTLS.Service) {
			v.add(p+".service", "want the service name the endpoints' identity carries, got %q", c.MeshTLS.Service)
		}
		if c.TLS != nil {
			v.add(p, "cannot be combined with tls")
		}
	}
	if !on {
		return
	}
	if !validServiceName.MatchString(m.Service) {
		v.add("mesh.service", "want this workload's service name (letters, digits, '-', '_', '.'), got %q", m.Service)
	}
	switch m.DefaultAction {
	case "", ActionAllow, ActionDeny:
	default:
		v.add("mesh.default_action", "want allow or deny, got %q", m.DefaultAction)
	}
	files := m.CertFile != "" || m.KeyFile != "" || m.CAFile != ""
	switch m.Identity {
	case "", IdentityConsulConnect:
		if files {
			v.add("mesh", "cert_file, key_file and ca_file are for identity: files; consul_connect takes them from Consul")
		}
		if len(m.Intentions) > 0 {
			v.add("mesh.intentions", "with identity: consul_connect intentions come from Consul (service-intentions config entries); local ones are for identity: files")
		}
	case IdentityFiles:
		for _, f := range []struct{ key, val string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}} {
			if f.val == "" {
				v.add("mesh."+f.key, "required with identity: files")
			}
		}
	default:
		v.add("mesh.identity", "want consul_connect or files, got %q", m.Identity)
	}
	for i, in := range m.Intentions {
		v.intention(fmt.Sprintf("mesh.intentions[%d]", i), in)
	}
}

func (v *validator) intention(p string, in Intention) {
	if in.Source != "*" && !validServiceName.MatchString(in.Source) {
		v.add(p+".source", "want a service name or \"*\", got %q", in.Source)
	}
	switch {
	case in.Action != "" && len(in.Permissions) > 0:
		v.add(p, "action and permissions are exclusive (an L4 or an L7 intention)")
	case in.Action == "" && len(in.Permissions) == 0:
		v.add(p, "needs an action or permissions")
	case in.Action != "" && in.Action != ActionAllow && in.Action != ActionDeny:
		v.add(p+".action", "want allow or deny, got %q", in.Action)
	}
	for j, perm := range in.Permissions {
		pp := fmt.Sprintf("%s.permissions[%d]", p, j)
		if perm.Action != ActionAllow && perm.Action != ActionDeny {
			v.add(pp+".action", "want allow or deny, got %q", perm.Action)
		}
		h := perm.HTTP
		n := 0
		for _, s := range []string{h.PathExact, h.PathPrefix, h.PathRegex} {
			if s != "" {
				n++
			}
		}
		if n > 1 {
			v.add(pp+".http", "path_exact, path_prefix and path_regex are exclusive")
		}
		if h.PathRegex != "" {
			if _, err := regexp.Compile(h.PathRegex); err != nil {
				v.add(pp+".http.path_regex", "%v", err)
			}
		}
		for k, hd := range h.Header {
			v.intentionHeader(fmt.Sprintf("%s.http.header[%d]", pp, k), hd)
		}
	}
}

func (v *validator) intentionHeader(p string, h IntentionHeader) {
	if h.Name == "" || h.Name != strings.ToLower(h.Name) {
		v.add(p+".name", "want a lowercase metadata key, got %q", h.Name)
	}
	n := 0
	if h.Present {
		n++
	}
	for _, s := range []string{h.Exact, h.Prefix, h.Suffix, h.Contains, h.Regex} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		v.add(p, "exactly one of present, exact, prefix, suffix, contains and regex is required")
	}
	if h.Regex != "" {
		if _, err := regexp.Compile(h.Regex); err != nil {
			v.add(p+".regex", "%v", err)
		}
	}
}

// applyMeshDefaults fills the mesh section's defaults.
func (c *Config) applyMeshDefaults() {
	if c.Mesh == nil {
		return
	}
	if c.Mesh.Identity == "" {
		c.Mesh.Identity = IdentityConsulConnect
	}
	if c.Mesh.DefaultAction == "" {
		c.Mesh.DefaultAction = ActionDeny
	}
}

// MeshNeedsConsul reports whether the mesh section takes its identity and
// intentions from Consul.
func (c *Config) MeshNeedsConsul() bool {
	return c.Mesh != nil && c.Mesh.Identity == IdentityConsulConnect
}
