package server

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenConfig returns how meshd binds its listeners and admin port. With
// reusePort, each socket sets SO_REUSEPORT before bind, so a second meshd
// with the same config can bind the same addresses while the first still
// serves (the zero-downtime upgrade: start new, wait for its /ready,
// SIGTERM old). The kernel spreads new connections over every socket
// bound to the address; when the old process closes its sockets at the
// start of its drain, they all go to the new one. Linux only lets
// processes of the same effective user share a port this way, so another
// user cannot take over meshd's traffic by binding next to it.
func listenConfig(reusePort bool) net.ListenConfig {
	if !reusePort {
		return net.ListenConfig{}
	}
	return net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", serr)
		}
		return nil
	}}
}
