// Package consultest runs real Consul agents for tests.
//
// meshd's tests talk to a real `consul agent -dev` rather than a fake HTTP
// server, because what matters (blocking-query indexes, health filtering, ACL
// answers, an agent that dies and comes back) is Consul's behaviour, not
// ours. [Binary] finds the agent binary that scripts/install-consul.sh
// (`make consul`) builds once into a cache outside the checkout (the
// MPL-licensed v1.14.11); tests never build it themselves. [Start]
// runs one on free loopback ports for the life of a test, [Launch] for the
// life of a test binary (from TestMain, to share one agent between tests
// that use distinct service names).
//
// Agents run in dev mode: in-memory state, a single server that elects
// itself, datacenter "dc1". A restarted agent has forgotten everything, so
// tests register their services again.
package consultest
