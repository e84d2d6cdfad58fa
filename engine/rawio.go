package engine

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Why the data path calls read(2) and write(2) itself.
//
// A socket read through net.Conn goes through syscall.Syscall, which tells
// the scheduler the goroutine may block (entersyscall). When the process
// was idle, Go's sysmon thread was asleep for good, and entersyscall wakes
// it: a futex wake, then sysmon polls every 20 µs (nanosleep) until it sees
// every P idle again and goes back to sleep (another futex). At the rates a
// sidecar lives at, where meshd idles between calls, that was about five
// system calls and two thread wake-ups per call, half of meshd's system
// calls (perf stat, meshbench -syscalls).
//
// The engine's sockets are non-blocking, so a read or write returns at once
// with data, EAGAIN or an error: there is nothing for the scheduler to hand
// the P off for. rawReader and writeNonBlocking issue them as raw system
// calls inside syscall.RawConn's Read and Write, which keep the netpoller's
// readiness protocol (the poller is armed before the read that may return
// EAGAIN, and the goroutine parks only after it) and deadlines.

// SocketReader is implemented by a net.Conn wrapper that also implements
// syscall.Conn, to say whether its Read reads its socket and nothing else.
// The engine writes through any syscall.Conn, but reads under a
// connection's Read only when it is a *net.TCPConn or *net.UnixConn, or a
// SocketReader that says so: a wrapper that replays bytes it sniffed
// before handing the connection over must not be read under.
type SocketReader interface {
	ReadsSocket() bool
}

// readsSocket reports whether the engine may read nc's socket directly.
func readsSocket(nc net.Conn) bool {
	switch c := nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	case SocketReader:
		return c.ReadsSocket()
	}
	return false
}

// rawReader is an io.Reader over a connection's RawConn. It is used by the
// connection's reader goroutine only.
type rawReader struct {
	raw syscall.RawConn
	fn  func(uintptr) bool // r.read, bound once so a Read allocates nothing
	p   []byte
	n   int
	err syscall.Errno
}

func newRawReader(raw syscall.RawConn) *rawReader {
	r := &rawReader{raw: raw}
	r.fn = r.read
	return r
}

// Read reads at least one byte, waiting in the netpoller while the socket
// is empty, as net.Conn's Read does: 0 bytes without an error is io.EOF.
func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.err = p, 0, 0
	err := r.raw.Read(r.fn)
	n, errno := r.n, r.err
	r.p = nil
	switch {
	case err != nil: // closed, or a deadline passed
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn.Read callback: false asks the netpoller to wait for
// the socket to become readable and call it again.
func (r *rawReader) read(fd uintptr) bool {
	for {
		n, errno := rawRead(fd, r.p)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.n, r.err = n, errno
		return true
	}
}
