package authz

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Action is what a rule or permission does with a call it matches. The zero
// value is Deny, so that a forgotten action fails closed.
type Action uint8

const (
	// Deny refuses the call (PERMISSION_DENIED).
	Deny Action = iota
	// Allow lets the call through to routing.
	Allow
)

// String returns "allow" or "deny", Consul's spelling.
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// MarshalText writes the action as String does, so that config dumps read
// like Consul's intentions.
func (a Action) MarshalText() ([]byte, error) {
	if a != Allow && a != Deny {
		return nil, fmt.Errorf("authz: invalid action %d", a)
	}
	return []byte(a.String()), nil
}

// UnmarshalText reads "allow" or "deny", so that meshd's config can spell
// local rules as Consul does.
func (a *Action) UnmarshalText(b []byte) error {
	switch string(b) {
	case "allow":
		*a = Allow
	case "deny":
		*a = Deny
	default:
		return fmt.Errorf("authz: action %q: want \"allow\" or \"deny\"", b)
	}
	return nil
}

// Wildcard is the source that matches every caller, authenticated or not.
const Wildcard = "*"

// Precedences Compile gives rules whose Precedence is 0: Consul's values in
// the default namespace, where an exact source outranks "*".
const (
	PrecedenceExact    = 9
	PrecedenceWildcard = 8
)

// Rule is one source's intention toward the destination, in meshd's neutral
// form (from Consul through FromConsul, or from local config).
type Rule struct {
	// Source is the calling service's name, or "*" for any caller,
	// including an unauthenticated one.
	Source string `json:"source"`
	// Action is what an L4 rule (no Permissions) does. It is ignored when
	// Permissions is set: an L7 rule falls back to the table's default.
	Action Action `json:"action"`
	// Permissions make the rule L7: they are tried in order and the first
	// that matches decides.
	Permissions []Permission `json:"permissions,omitempty"`
	// Precedence orders rules, higher first (Consul's). 0 means compute it:
	// PrecedenceExact for a named source, PrecedenceWildcard for "*".
	Precedence int `json:"precedence"`
	// ID names the rule in decisions, logs and dumps (a Consul intention ID,
	// or "config[3]"). Compile names an empty one "rules[i]".
	ID string `json:"id"`
}

// Permission is one L7 condition of a rule and the action it takes when the
// call meets it. All conditions set must hold; none set matches any call.
type Permission struct {
	// Action applies when the permission matches.
	Action Action `json:"action"`
	// At most one path condition, matched against the gRPC method path
	// "/pkg.Service/Method". PathExact and PathPrefix must start with "/";
	// PathRegex is RE2 and must match the whole path.
	PathExact  string `json:"path_exact,omitempty"`
	PathPrefix string `json:"path_prefix,omitempty"`
	PathRegex  string `json:"path_regex,omitempty"`
	// Methods are HTTP methods (upper case, as Consul validates them). A
	// gRPC call is always POST, so a list without "POST" never matches.
	Methods []string `json:"methods,omitempty"`
	// Headers must all hold (see HeaderRule).
	Headers []HeaderRule `json:"headers,omitempty"`
	// Unsupported, when set, says why meshd cannot check this permission
	// fully (it requires a JWT, say). Such a permission fails closed: an
	// allow never matches, a deny matches on its other conditions alone.
	Unsupported string `json:"unsupported,omitempty"`
}

// HeaderRule is one header condition of a permission. Exactly one of
// Present, Exact, Prefix, Suffix, Contains and Regex must be set (Consul's
// rule). See the package doc for missing and multi-valued headers.
type HeaderRule struct {
	// Name is the header (metadata key); compared lower-cased, as gRPC
	// metadata keys are.
	Name string `json:"name"`
	// Present holds when the header is there, with any value.
	Present bool `json:"present,omitempty"`
	// Exact, Prefix, Suffix and Contains compare a value as strings.
	Exact    string `json:"exact,omitempty"`
	Prefix   string `json:"prefix,omitempty"`
	Suffix   string `json:"suffix,omitempty"`
	Contains string `json:"contains,omitempty"`
	// Regex is RE2 and must match the whole value.
	Regex string `json:"regex,omitempty"`
	// Invert negates the result (but a missing header still fails, unless
	// the kind is Present).
	Invert bool `json:"invert,omitempty"`
	// IgnoreCase compares Exact, Prefix, Suffix and Contains ASCII
	// case-insensitively; it does nothing for Regex and Present (Envoy).
	IgnoreCase bool `json:"ignore_case,omitempty"`
}

// Headers are the call's request headers. Keys are lower case, as in
// metadata.MD (which implements it); nil values mean the header is absent.
type Headers interface {
	Get(key string) []string
}

// Reasons a Decision gives.
const (
	// ReasonIntention: an L4 rule for the caller decided.
	ReasonIntention = "intention"
	// ReasonPermission: a permission of the caller's L7 rule decided.
	ReasonPermission = "permission"
	// ReasonDefault: no rule matched the caller, or its L7 rule had no
	// matching permission; the table's default action decided.
	ReasonDefault = "default"
	// ReasonL7OnTCP: DecideTCP found the caller's rule is L7; an opaque
	// connection has no request its permissions could match, so it is
	// denied.
	ReasonL7OnTCP = "l7_rule_on_tcp"
	// ReasonNoTable: Decide was called on a nil table (nothing known yet);
	// the call is denied.
	ReasonNoTable = "no_table"
)

// DefaultRule is Decision.Rule when no rule matched the caller.
const DefaultRule = "default"

// Decision is the outcome of one call's authorization, for the engine (Allow)
// and for access logs and metrics (the rest).
type Decision struct {
	// Allow says whether the call may proceed.
	Allow bool
	// Rule is the ID of the rule that matched the caller's source, or
	// DefaultRule when none did.
	Rule string
	// Reason is one of the Reason constants.
	Reason string
	// Permission is the index in the rule's Permissions of the permission
	// that decided, -1 when none did.
	Permission int
}

// Table is an immutable compiled rule set for one destination. Its methods
// are safe for concurrent use; a new rule set is a new Table.
type Table struct {
	destination string
	def         Action
	rules       []Rule // normalized copy, in decision order, for Dump
	compiled    []compiledRule
	bySource    map[string]int // first rule for each named source
	wildcard    int            // first "*" rule, -1 if none
}

type compiledRule struct {
	id     string
	action Action
	l7     bool
	perms  []compiledPermission
}

// Compile checks rules, compiles their regexes once, orders them by
// precedence (stable: equal precedences keep their order) and returns the
// table Decide evaluates. def is the action when no rule matches the caller.
// An error names the rule (its ID, or "rules[i]") and the bad field; rules
// is not modified.
func Compile(destination string, rules []Rule, def Action) (*Table, error) {
	if def != Allow && def != Deny {
		return nil, fmt.Errorf("authz: %s: invalid default action %d", destination, def)
	}
	t := &Table{
		destination: destination,
		def:         def,
		rules:       make([]Rule, len(rules)),
		compiled:    make([]compiledRule, len(rules)),
		bySource:    make(map[string]int, len(rules)),
		wildcard:    -1,
	}
	for i, r := range rules {
		r = cloneRule(r)
		if r.ID == "" {
			r.ID = "rules[" + strconv.Itoa(i) + "]"
		}
		if r.Precedence == 0 {
			r.Precedence = PrecedenceExact
			if r.Source == Wildcard {
				r.Precedence = PrecedenceWildcard
			}
		}
		t.rules[i] = r
	}
	order := make([]int, len(rules))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return t.rules[b].Precedence - t.rules[a].Precedence })
	sorted := make([]Rule, len(rules))
	for i, j := range order {
		sorted[i] = t.rules[j]
	}
	t.rules = sorted

	var errs []error
	for i, r := range t.rules {
		c, err := compileRule(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("authz: %s: rule %s (source %q): %w", destination, r.ID, r.Source, err))
			continue
		}
		t.compiled[i] = c
		switch {
		case r.Source == Wildcard:
			if t.wildcard < 0 {
				t.wildcard = i
			}
		default:
			if _, seen := t.bySource[r.Source]; !seen {
				t.bySource[r.Source] = i
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

func compileRule(r Rule) (compiledRule, error) {
	if r.Source == "" {
		return compiledRule{}, errors.New("no source (use \"*\" for any caller)")
	}
	if r.Action != Allow && r.Action != Deny {
		return compiledRule{}, fmt.Errorf("invalid action %d", r.Action)
	}
	c := compiledRule{id: r.ID, action: r.Action, l7: len(r.Permissions) > 0}
	for i, p := range r.Permissions {
		cp, err := compilePermission(p)
		if err != nil {
			return compiledRule{}, fmt.Errorf("permission %d: %w", i, err)
		}
		c.perms = append(c.perms, cp)
	}
	return c, nil
}

func cloneRule(r Rule) Rule {
	r.Permissions = slices.Clone(r.Permissions)
	for i := range r.Permissions {
		r.Permissions[i].Methods = slices.Clone(r.Permissions[i].Methods)
		r.Permissions[i].Headers = slices.Clone(r.Permissions[i].Headers)
	}
	return r
}

// Decide evaluates one call: source is the caller's service name ("" when
// the caller is unauthenticated, which matches only "*" rules), method the
// gRPC method path, h its request headers (nil for none). It does no I/O and
// no allocation beyond what h.Get does. A nil table denies (ReasonNoTable).
func (t *Table) Decide(source, method string, h Headers) Decision {
	if t == nil {
		return Decision{Reason: ReasonNoTable, Permission: -1}
	}
	i := t.wildcard
	if source != "" {
		if j, ok := t.bySource[source]; ok && (i < 0 || j < i) {
			i = j
		}
	}
	if i < 0 {
		return Decision{Allow: t.def == Allow, Rule: DefaultRule, Reason: ReasonDefault, Permission: -1}
	}
	r := &t.compiled[i]
	if !r.l7 {
		return Decision{Allow: r.action == Allow, Rule: r.id, Reason: ReasonIntention, Permission: -1}
	}
	for pi := range r.perms {
		p := &r.perms[pi]
		if p.match(method, h) {
			return Decision{Allow: p.action == Allow, Rule: r.id, Reason: ReasonPermission, Permission: pi}
		}
	}
	return Decision{Allow: t.def == Allow, Rule: r.id, Reason: ReasonDefault, Permission: -1}
}

// DecideTCP evaluates an opaque (non-gRPC) connection from source, which
// has no method or headers: the caller's L4 rule gives its action; an L7
// rule denies, as Consul's L4 filter treats intentions with permissions
// (they can only allow requests it cannot see); no rule, the default. A
// nil table denies (ReasonNoTable).
func (t *Table) DecideTCP(source string) Decision {
	if t == nil {
		return Decision{Reason: ReasonNoTable, Permission: -1}
	}
	i := t.wildcard
	if source != "" {
		if j, ok := t.bySource[source]; ok && (i < 0 || j < i) {
			i = j
		}
	}
	if i < 0 {
		return Decision{Allow: t.def == Allow, Rule: DefaultRule, Reason: ReasonDefault, Permission: -1}
	}
	r := &t.compiled[i]
	if r.l7 {
		return Decision{Rule: r.id, Reason: ReasonL7OnTCP, Permission: -1}
	}
	return Decision{Allow: r.action == Allow, Rule: r.id, Reason: ReasonIntention, Permission: -1}
}

// Default returns the action for callers no rule matches.
func (t *Table) Default() Action { return t.def }

// Destination returns the service the table authorizes calls to.
func (t *Table) Destination() string { return t.destination }

// Len returns the number of rules.
func (t *Table) Len() int { return len(t.rules) }

// TableDump is the JSON view Dump returns.
type TableDump struct {
	Destination   string `json:"destination"`
	DefaultAction Action `json:"default_action"`
	// Rules are in decision order, with IDs and precedences filled in.
	Rules []Rule `json:"rules"`
}

// Dump returns a JSON-able copy of the compiled rules, in decision order,
// for the admin /config_dump. Header values matched against credential
// headers (authorization, cookie, or a name with token, secret, key or
// password in it) read "[redacted]": a rule may compare a shared secret,
// and the admin page is not where it should leak.
func (t *Table) Dump() any {
	d := TableDump{Destination: t.destination, DefaultAction: t.def, Rules: make([]Rule, len(t.rules))}
	for i, r := range t.rules {
		r = cloneRule(r)
		for pi := range r.Permissions {
			for hi := range r.Permissions[pi].Headers {
				redactHeader(&r.Permissions[pi].Headers[hi])
			}
		}
		d.Rules[i] = r
	}
	return d
}

// Redacted replaces a credential header's values in Dump.
const Redacted = "[redacted]"

func redactHeader(h *HeaderRule) {
	name := strings.ToLower(h.Name)
	secret := name == "authorization" || name == "proxy-authorization" || name == "cookie"
	for _, w := range []string{"token", "secret", "key", "password"} {
		secret = secret || strings.Contains(name, w)
	}
	if !secret {
		return
	}
	for _, v := range []*string{&h.Exact, &h.Prefix, &h.Suffix, &h.Contains, &h.Regex} {
		if *v != "" {
			*v = Redacted
		}
	}
}
