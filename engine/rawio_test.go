package engine

import (
	"io"
	"net"
	"syscall"
	"testing"
)

// replayWrapper stands for a connection handed over after sniffing: Read
// returns the sniffed bytes first, and the socket stays visible for
// writes.
type replayWrapper struct {
	net.Conn
	sc      syscall.Conn
	pending []byte
	socket  bool // what ReadsSocket answers, when the wrapper has it
}

func (w *replayWrapper) SyscallConn() (syscall.RawConn, error) { return w.sc.SyscallConn() }

type socketReaderWrapper struct{ *replayWrapper }

func (w socketReaderWrapper) ReadsSocket() bool { return w.socket }

// TestReadsSocket: the engine reads under a connection only where its Read
// is the socket's, and a replaying wrapper keeps its bytes.
func TestReadsSocket(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	tcp := server.(*net.TCPConn)
	replay := &replayWrapper{Conn: tcp, sc: tcp, pending: []byte("sniffed")}
	for _, tc := range []struct {
		name string
		nc   net.Conn
		want bool
	}{
		{"*net.TCPConn", tcp, true},
		{"a wrapper with only SyscallConn", replay, false},
		{"a SocketReader that reads the socket", socketReaderWrapper{&replayWrapper{Conn: tcp, sc: tcp, socket: true}}, true},
		{"a SocketReader that replays", socketReaderWrapper{replay}, false},
		{"net.Pipe", func() net.Conn { a, b := net.Pipe(); b.Close(); return a }(), false},
	} {
		if got := readsSocket(tc.nc); got != tc.want {
			t.Errorf("%s: readsSocket %v, want %v", tc.name, got, tc.want)
		}
	}

	// Through a conn the engine set up, the raw reader sees the socket's
	// bytes and EOF as net.Conn's Read would.
	var c conn
	c.init(&shared{cfg: Config{}.withDefaults()}, tcp, false)
	if _, ok := c.src.(*rawReader); !ok {
		t.Fatalf("a *net.TCPConn is read through %T, want *rawReader", c.src)
	}
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	got, err := io.ReadAll(c.src)
	if err != nil || string(got) != "hello" {
		t.Errorf("raw reader read %q, %v; want hello and EOF", got, err)
	}
}
