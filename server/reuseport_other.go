//go:build !linux

package server

import "net"

// listenConfig returns how meshd binds its listeners and admin port. Only
// Linux spreads connections over processes sharing a port
// (SO_REUSEPORT); elsewhere meshd always binds exclusively, and an
// upgrade means a restart.
func listenConfig(bool) net.ListenConfig { return net.ListenConfig{} }
