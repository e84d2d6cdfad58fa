// Package authz decides, per call and without I/O, whether a caller may call
// this workload's service, from Consul intentions (or the same rules written
// in meshd's config).
//
// # Where the parts live
//
//   - table.go: [Rule], [Compile] and the immutable [Table] whose
//     [Table.Decide] the inbound listener calls for every call, before
//     routing (sub-microsecond, no allocations).
//   - match.go: path and header matchers, compiled once.
//   - consul.go: [FromConsul], Consul's intentions in meshd's neutral form.
//   - watcher.go: [Watcher], which follows the destination's intentions
//     with a blocking query (discovery.Follower) and swaps the compiled
//     table atomically.
//
// The listener maps a denied [Decision] to PERMISSION_DENIED (or
// UNAUTHENTICATED for a caller without identity) in policy's status file.
//
// # Semantics
//
// They are Consul's, as its Envoy sidecars enforce them (consul
// agent/xds/rbac.go, Envoy's RBAC and header matchers), so that moving a
// workload from Envoy to meshd changes nothing:
//
//   - Rules are tried in precedence order, highest first (Consul's
//     Precedence: an exact source name, 9, before "*", 8, in the default
//     namespace); ties keep their given order. The first rule whose source
//     matches the caller decides; later rules for the same caller are never
//     looked at, even if they would allow.
//   - A source "*" matches every caller, including an unauthenticated one
//     (source ""); a named source matches only that service. An
//     unauthenticated caller therefore matches only "*" rules.
//   - An L4 rule (no permissions) gives its Action.
//   - An L7 rule tries its permissions in order; the first that matches
//     gives its Action. If none matches, the table's default action applies
//     (not the rule's: an L7 intention has no action of its own).
//   - A permission matches when all of its conditions hold: the path
//     condition (exact, prefix, or RE2 regex matching the whole gRPC method
//     path "/pkg.Service/Method"), the method condition (a gRPC call is
//     always POST, so Methods must be empty or list "POST"), and every
//     header rule. A permission without conditions matches every call.
//   - A header rule has one kind: present, exact, prefix, suffix, contains
//     or regex (whole value). IgnoreCase compares exact, prefix, suffix and
//     contains ASCII case-insensitively, as Envoy does; it has no effect on
//     regex or present. Invert negates the result. A missing header fails
//     every kind, inverted or not, except present: an inverted present rule
//     holds exactly when the header is absent (Envoy's rule: "not equal to
//     x" does not hold for a header that is not there).
//   - A header with several values: the rule's kind holds when any value
//     satisfies it, and Invert negates that, so an inverted rule holds only
//     when no value satisfies the kind. Envoy instead joins the values with
//     "," and matches once; matching each value cannot be fooled by a
//     caller that adds a second value to slip past a deny rule ("bad" and
//     "x" join to "bad,x", which an exact deny on "bad" misses).
//   - No rule matches the caller: the default action (Consul's ACL default
//     policy or meshd's configured default).
//
// Consul features meshd cannot check fail closed: see [FromConsul].
package authz
