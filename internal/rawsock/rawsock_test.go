package rawsock

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
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

// TestReadsSocket: a socket is read directly only where the connection's
// Read is the socket's, so a replaying wrapper keeps its bytes; Wrap and
// Reader read what the socket got, then EOF, as net.Conn's Read would.
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
		if got := ReadsSocket(tc.nc); got != tc.want {
			t.Errorf("%s: ReadsSocket %v, want %v", tc.name, got, tc.want)
		}
		if w := Wrap(tc.nc); (w != tc.nc) != tc.want {
			t.Errorf("%s: Wrap returned %T", tc.name, w)
		}
	}

	w := Wrap(tcp)
	if _, ok := w.(*Conn); !ok {
		t.Fatalf("Wrap(*net.TCPConn) = %T, want *Conn", w)
	}
	// Both ways through the raw calls: a write larger than the socket
	// buffers waits in the netpoller until the peer reads.
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i)
	}
	echoed := make(chan error, 1)
	go func() { // ends when the 8 MiB are read or the connection fails
		got := make([]byte, len(big))
		_, err := io.ReadFull(client, got)
		if err == nil && string(got) != string(big) {
			err = io.ErrUnexpectedEOF
		}
		echoed <- err
	}()
	if n, err := w.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write: %d, %v", n, err)
	}
	if err := <-echoed; err != nil {
		t.Fatalf("the peer read: %v", err)
	}
	// A deadline holds under the raw calls: nothing comes, the read
	// waits in the netpoller until it passes.
	if err := w.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := w.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	got, err := io.ReadAll(w)
	if err != nil || string(got) != "hello" {
		t.Errorf("raw read %q, %v; want hello and EOF", got, err)
	}
}
