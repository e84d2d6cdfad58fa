package server

import (
	"net"
	"syscall"
	"testing"

	"github.com/meshd/meshd/internal/rawsock"
)

// TestLimitConnSocket: a connection accepted under max_connections still
// exposes its socket and says its Read is the socket's, so the engine
// reads and writes it with raw system calls; closing it gives its slot
// back once.
func TestLimitConnSocket(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := limit(inner, 1).(*limitListener)
	defer l.Close()
	client, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(syscall.Conn); !ok {
		t.Fatalf("%T hides its socket", c)
	}
	if !rawsock.ReadsSocket(c) {
		t.Errorf("%T: ReadsSocket false for a plain TCP connection", c)
	}
	if _, ok := rawsock.Wrap(c).(*rawsock.Conn); !ok {
		t.Errorf("rawsock.Wrap(%T) did not wrap it", c)
	}
	c.Close()
	c.Close()
	if n := l.active.Load(); n != 0 {
		t.Errorf("%d slots held after Close twice, want 0", n)
	}
}
