package testkit

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestTCPServer: connections are served until CloseConns, which also
// closes each one accepted afterwards; FreeAddr refuses.
func TestTCPServer(t *testing.T) {
	t.Parallel()
	s := ServeLoopback(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	echo := func() error {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}
	if err := echo(); err != nil {
		t.Fatalf("echo: %v", err)
	}
	s.CloseConns()
	if err := echo(); err == nil {
		t.Fatal("a connection accepted after CloseConns was served")
	}
	if _, err := net.Dial("tcp", FreeAddr(t)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial FreeAddr: %v, want connection refused", err)
	}
}

// TestBlackHole: a black hole takes what it is sent and never answers.
func TestBlackHole(t *testing.T) {
	t.Parallel()
	c, err := net.Dial("tcp", BlackHole(t).Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if _, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("read: %v, want a timeout", err)
	}
}
