// Package configs holds meshd's example configuration files (a sidecar, a
// transparent sidecar, an edge proxy and a minimal config). It has no code:
// its test loads and validates every *.yaml here, so the examples cannot
// drift from the schema.
package configs
