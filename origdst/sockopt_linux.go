package origdst

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/
// ip6_tables.h: the IPv6 twin of SO_ORIGINAL_DST, at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// originalDst asks conntrack where conn was headed before NAT rewrote its
// destination. It returns ok=false when the kernel knows no original
// destination (conntrack does not track the connection).
func originalDst(conn net.Conn) (netip.AddrPort, bool, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, false, fmt.Errorf("origdst: %T has no file descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("origdst: %w", err)
	}
	level, opt := uintptr(unix.SOL_IP), uintptr(unix.SO_ORIGINAL_DST)
	if la, ok := conn.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
		level, opt = unix.SOL_IPV6, ip6tSOOriginalDst
	}
	// RawSockaddrInet6 is large enough for either family's answer.
	var sa unix.RawSockaddrInet6
	var serr syscall.Errno
	cerr := raw.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(sa))
		_, _, serr = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, level, opt,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
	})
	if cerr != nil {
		return netip.AddrPort{}, false, fmt.Errorf("origdst: %w", cerr)
	}
	if serr != 0 {
		if errors.Is(serr, unix.ENOENT) || errors.Is(serr, unix.ENOPROTOOPT) {
			return netip.AddrPort{}, false, nil
		}
		return netip.AddrPort{}, false, fmt.Errorf("origdst: getsockopt: %w", serr)
	}
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), netPort(&sa4.Port)), true, nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), netPort(&sa.Port)), true, nil
	}
	return netip.AddrPort{}, false, fmt.Errorf("origdst: unexpected address family %d", sa.Family)
}

// netPort reads a sockaddr's port, stored in network byte order whatever
// the host's.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}
