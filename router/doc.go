// Package router maps a call's full method name and metadata to a route.
//
// A Table is immutable: it is built once from the config's routes and then
// shared by every call, so Lookup takes no lock and allocates nothing. A
// reload builds a new Table and the proxy swaps it in atomically.
//
// First match wins, in file order, exactly as written; the table indexes
// exact methods and services in maps only to avoid scanning, and resolves
// ties by route position, so indexing never changes which route wins.
package router
