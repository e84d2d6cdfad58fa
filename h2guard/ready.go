package h2guard

import (
	"io"
	"net"

	"google.golang.org/grpc/mem"
)

// grpc-go (1.85+) reads an idle connection without holding a read buffer
// when the connection is a bare *net.TCPConn: it waits for the socket to
// be readable, then takes a buffer from a pool. Any wrapper hides the
// socket and costs every idle connection a pinned 32 KiB buffer, unless it
// offers the same through ReadOnReady, which grpc-go looks for (its
// readyreader.Reader interface). The guard does, for connections accepted
// through Listener.

// readySocket is the part of syscall.RawConn ReadOnReady needs.
type readySocket interface {
	Read(f func(fd uintptr) (done bool)) error
}

// socketOf returns the socket under nc, following NetConn wrappers down to
// a *net.TCPConn, or nil.
func socketOf(nc net.Conn) readySocket {
	for range 4 {
		switch c := nc.(type) {
		case *net.TCPConn:
			raw, err := c.SyscallConn()
			if err != nil || !rawReadSupported {
				return nil
			}
			return raw
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// ReadOnReady waits until the connection is readable, then reads up to
// bufSize bytes into a buffer from pool and returns it (grpc-go puts it
// back). The guard's checks apply to what it read as to Read.
func (c *conn) ReadOnReady(bufSize int, pool mem.BufferPool) (*[]byte, int, error) {
	if c.raw == nil {
		buf := pool.Get(bufSize)
		n, err := c.Read(*buf)
		if n <= 0 {
			pool.Put(buf)
			if err == nil {
				err = io.ErrNoProgress
			}
			return nil, 0, err
		}
		return buf, n, nil // an error comes back on the next read
	}
	var (
		buf  *[]byte
		n    int
		rerr error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		buf = pool.Get(bufSize)
		n, rerr = sysRead(fd, *buf)
		if rerr != nil {
			pool.Put(buf)
			buf = nil
		}
		return !wouldBlock(rerr)
	})
	switch {
	case err != nil:
		if buf != nil {
			pool.Put(buf)
		}
		_, err = c.afterRead(nil, err)
		return nil, 0, err
	case rerr != nil:
		return nil, 0, rerr
	case n == 0:
		pool.Put(buf)
		return nil, 0, io.EOF
	}
	if _, err := c.afterRead((*buf)[:n], nil); err != nil {
		pool.Put(buf)
		return nil, 0, err
	}
	return buf, n, nil
}
