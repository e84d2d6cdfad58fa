// Package server assembles a running meshd from a config: clusters with
// their discovery and health watching, the route table, the data-path
// listeners and the admin server. It owns every goroutine it starts.
//
// Reload builds and validates a whole new data-path State before swapping
// it in atomically (Caddy's unsyncedDecodeAndRun idea): a cluster whose
// definition did not change is carried over with its connections, health
// state and Consul watch; a removed or changed cluster stops taking new
// calls at once and is closed once its in-flight calls finish (or the drain
// timeout passes). A reload that fails changes nothing.
package server
