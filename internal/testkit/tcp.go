package testkit

import (
	"io"
	"net"
	"sync"
	"testing"
)

// TCPServer accepts connections on a listener and serves each with a
// handler on a goroutine of its own. Stop, which runs when the test ends,
// closes the listener and every connection and waits for the goroutines.
// Its methods are safe for concurrent use.
type TCPServer struct {
	ln     net.Listener
	handle func(net.Conn)
	wg     sync.WaitGroup

	mu     sync.Mutex // guards conns, killed
	conns  []net.Conn
	killed bool
}

// Serve serves ln with handle until the test ends. A connection is closed
// when its handle returns, or at Stop.
func Serve(tb testing.TB, ln net.Listener, handle func(net.Conn)) *TCPServer {
	s := &TCPServer{ln: ln, handle: handle}
	s.wg.Add(1)
	go s.accept()
	tb.Cleanup(s.Stop)
	return s
}

// ServeLoopback is Serve on a new listener on 127.0.0.1, any port.
func ServeLoopback(tb testing.TB, handle func(net.Conn)) *TCPServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return Serve(tb, ln, handle)
}

// BlackHole accepts connections on a loopback port and never says a word:
// a peer that dials it waits for an answer that never comes. It reads and
// discards what it gets, so the peer's writes do not block.
func BlackHole(tb testing.TB) *TCPServer {
	tb.Helper()
	return ServeLoopback(tb, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

func (s *TCPServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.killed {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns = append(s.conns, c)
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

// Accepted is how many connections the server has accepted.
func (s *TCPServer) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Addr is the address the server listens on.
func (s *TCPServer) Addr() string { return s.ln.Addr().String() }

// CloseConns closes every connection, and from then on each new one as soon
// as it is accepted, as a crashed server's would be; the listener stays.
func (s *TCPServer) CloseConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killed = true
	for _, c := range s.conns {
		_ = c.Close()
	}
}

// Stop closes the listener and every connection and waits for the
// goroutines. It may be called more than once.
func (s *TCPServer) Stop() {
	_ = s.ln.Close()
	s.CloseConns()
	s.wg.Wait()
}

// FreeAddr is a loopback address nothing listens on: a dial to it is
// refused at once, and a server may listen on it. (The port was free a
// moment ago; that another test took it since is unlikely, not impossible.)
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
