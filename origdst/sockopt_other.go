//go:build !linux

package origdst

import (
	"net"
	"net/netip"
)

// originalDst knows no original destination off Linux: there is no
// iptables REDIRECT to undo, so every connection is routed by method alone.
func originalDst(net.Conn) (netip.AddrPort, bool, error) {
	return netip.AddrPort{}, false, nil
}
