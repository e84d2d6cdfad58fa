// Package kuberoutes makes Gateway API GRPCRoutes a meshd config source.
//
// A [Source] follows GRPCRoutes and Services with client-go informers over
// the dynamic client (no typed clientset is linked) and translates the
// routes attached to meshd ([Translate], pure and table-tested) into meshd
// routes and clusters:
//
//   - edge mode: routes whose parentRefs name the configured Gateway,
//     restricted by their hostnames to matching :authority values;
//   - mesh (GAMMA) mode: routes whose parentRefs are Services, restricted
//     to calls addressed to that Service (original destination equal to a
//     cluster IP and port, or :authority one of its DNS names).
//
// Matches become method, service or :path-regex matches plus header
// matches (an edge route's single hostname becomes match.authority,
// several one :authority regex); backendRefs become weighted splits over
// clusters named "kube:NS/SERVICE:PORT" with EndpointSlice discovery.
// Rule filters (filters.go): RequestHeaderModifier and
// ResponseHeaderModifier become the route's request_headers and
// response_headers, RequestMirror its mirror to the Service's cluster
// (percent or fraction, 100% by default). A field meshd cannot honour
// (filters on a backendRef, ExtensionRef, a header meshd does not edit,
// a second mirror; session persistence; cross-namespace backends)
// refuses its route with Accepted=False/UnsupportedValue rather than
// serving it with the field ignored.
//
// The server (server/kube.go) applies each translation through the same
// validate-then-swap apply loop as the file and the Consul key, routes
// first; a GRPCRoute whose rules do not validate is refused alone. The
// replica holding a Lease (an election of its own with client-go
// leaderelection's rules, lease.go) writes each route's
// status.parents[] entry for controllerName meshd.io/gateway-controller,
// and only when it changed.
package kuberoutes
