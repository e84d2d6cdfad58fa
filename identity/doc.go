// Package identity is the workload's mesh identity: a SPIFFE X.509 leaf
// certificate for one service, the CA roots that vouch for peers, and the
// TLS configs that use them for mTLS between meshd sidecars (issue 16).
//
// Where the parts live:
//
//   - id.go: [ID], [ParseID], [IDFromCert]: the SPIFFE ID Consul's CA
//     issues, spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>,
//     parsed strictly.
//   - material.go: [Material], one immutable version of the identity
//     (leaf chain, key, roots, trust domain), and the one peer
//     verification both sides use.
//   - source.go, consul.go, files.go: [Source] keeps the current
//     Material, swapped atomically. [NewConsul] follows the local agent's
//     CA roots and the service's leaf with two blocking-query loops
//     (discovery.Follower); [NewFiles] reads PEM files and re-reads them
//     when their contents change. Either way the last good Material keeps
//     serving while its origin fails, and [Source.Status] says why.
//   - tls.go: [Source.ServerConfig] and [Source.ClientConfig] read the
//     current Material per handshake, so rotation needs no restart;
//     [PeerID] gives the authenticated peer of a finished handshake.
//   - sniff.go: [Sniff] lets a permissive listener take TLS and
//     plaintext on one port while a mesh migrates.
//
// The verification rule, on both sides: the peer's chain (sent whole, leaf
// and intermediates, such as a new root cross-signed by the old one)
// verifies against the current roots, every root Consul lists (old and new
// during a rotation); its leaf is valid for client auth (server side) or
// server auth (client side); it carries exactly one URI SAN, a SPIFFE ID
// in the current trust domain. A client also requires the service it
// dialed for; that check replaces hostname verification, since mesh leaves
// carry no DNS names. Which callers a server admits is authorization's
// decision (Consul intentions), made on [PeerID] after the handshake.
//
// Threat model. mTLS protects the bytes between two sidecars: a network
// attacker can neither read nor alter a call, nor pose as a service
// without a leaf signed by the trust domain's CA, and every call carries
// an authenticated caller for authorization. It does not protect against
// a compromised node: whoever controls a host holds the leaves and keys of
// the services there (and the agent's ACL token, hence the right to ask
// for more). It does not revoke: a stolen leaf and key stay usable until
// the leaf expires (Consul's default leaf TTL is 72 hours; shorter TTLs
// bound the damage). It does not hide metadata: who talks to whom, when
// and how much is visible on the wire. Plaintext accepted by a permissive
// listener ([Sniff]) has none of these properties and no [PeerID].
package identity
