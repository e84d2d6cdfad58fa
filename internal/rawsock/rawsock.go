package rawsock

import (
	"io"
	"net"
	"os"
	"syscall"
)

// SocketReader is implemented by a net.Conn wrapper that also implements
// syscall.Conn, to say whether its Read reads its socket and nothing else.
// A wrapper that replays bytes it sniffed before handing the connection
// over must not be read under.
type SocketReader interface {
	ReadsSocket() bool
}

// ReadsSocket reports whether nc's socket may be read directly instead of
// through nc's Read: nc is a *net.TCPConn or *net.UnixConn, or a
// SocketReader that says so.
func ReadsSocket(nc net.Conn) bool {
	switch c := nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	case SocketReader:
		return c.ReadsSocket()
	}
	return false
}

// Reader is an io.Reader over a socket's RawConn. One goroutine reads at a
// time, as with net.Conn.
type Reader struct {
	raw syscall.RawConn
	fn  func(uintptr) bool // r.read, bound once so a Read allocates nothing
	p   []byte
	n   int
	err syscall.Errno
}

// NewReader reads raw's socket.
func NewReader(raw syscall.RawConn) *Reader {
	r := &Reader{raw: raw}
	r.fn = r.read
	return r
}

// Read reads at least one byte, waiting in the netpoller while the socket
// is empty, as net.Conn's Read does: 0 bytes without an error is io.EOF.
func (r *Reader) Read(p []byte) (int, error) {
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
func (r *Reader) read(fd uintptr) bool {
	for {
		n, errno := read(fd, r.p)
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

// Write writes as much of p as the socket fd takes now, retrying on EINTR:
// it returns EAGAIN when the socket took nothing. fd must be non-blocking.
// For use inside RawConn.Write's callback.
func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, errno := write(fd, p)
		if errno != syscall.EINTR {
			return n, errno
		}
	}
}

// writer writes all of a buffer through a RawConn, waiting in the
// netpoller while the socket is full. One goroutine writes at a time.
type writer struct {
	raw syscall.RawConn
	fn  func(uintptr) bool
	p   []byte
	n   int
	err syscall.Errno
}

func (w *writer) write(p []byte) (int, error) {
	w.p, w.n, w.err = p, 0, 0
	err := w.raw.Write(w.fn)
	n, errno := w.n, w.err
	w.p = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}

// cb is the RawConn.Write callback: false waits for the socket to become
// writable.
func (w *writer) cb(fd uintptr) bool {
	for w.n < len(w.p) {
		n, errno := Write(fd, w.p[w.n:])
		switch errno {
		case 0:
			w.n += n
		case syscall.EAGAIN:
			return false
		default:
			w.err = errno
			return true
		}
	}
	return true
}

// Conn is a socket whose Read and Write are raw system calls; everything
// else (addresses, deadlines, Close) is the wrapped connection's.
type Conn struct {
	net.Conn
	raw syscall.RawConn
	r   *Reader
	w   writer
}

// Wrap returns nc with raw reads and writes when its socket can be read
// directly (ReadsSocket), else nc itself.
func Wrap(nc net.Conn) net.Conn {
	sc, ok := nc.(syscall.Conn)
	if !ok || !ReadsSocket(nc) {
		return nc
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	c := &Conn{Conn: nc, raw: raw, r: NewReader(raw)}
	c.w.raw = raw
	c.w.fn = c.w.cb
	return c
}

// Read reads the socket.
func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write writes all of p to the socket, or fails.
func (c *Conn) Write(p []byte) (int, error) { return c.w.write(p) }

// SyscallConn is the socket's.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// ReadsSocket is true: Conn adds nothing to the socket's bytes.
func (c *Conn) ReadsSocket() bool { return true }

// NetConn returns the wrapped connection (for its socket options).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection when the wrapped one can.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: "tcp", Err: syscall.ENOTSUP}
}
