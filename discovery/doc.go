// Package discovery tells meshd which backend instances a cluster has.
//
// A [Resolver] produces whole snapshots of a service's endpoints, never
// deltas: every call of the update callback carries the complete, sorted
// list, so a consumer (balancer.Cluster) can diff by [Endpoint.ID] without
// keeping discovery state of its own, and a missed or repeated snapshot can
// never leave it inconsistent.
//
// Two resolvers exist:
//
//   - [Static] serves a fixed list from the config's `endpoints:` key.
//   - [Consul] follows one Consul service with blocking queries on the health
//     endpoint (GET /v1/health/service/:name), the loop the consul api/watch
//     package runs: WaitIndex = last X-Consul-Index, reset to 0 when the index
//     goes backwards, back off with jitter on errors, skip results equal to the
//     previous one. When Consul is unreachable the last snapshot stays in
//     force: a stale list of backends is better than an empty one, and the
//     balancer's own health watching removes instances that really died.
//     [Consul.Status] reports the loop's health for meshd's admin endpoints.
//     A token that may read only some instances gets a filtered answer, not
//     an error (Consul's rule); the loop sends it and logs the filtering.
//
// [NewConsulClient] builds the Consul API client the way the consul CLI does,
// so CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN work as operators expect.
package discovery
