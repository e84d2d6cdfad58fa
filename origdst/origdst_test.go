package origdst

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/meshd/meshd/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestDetect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		send     []byte
		closeW   bool
		wantH2   bool
		wantHead []byte
		wantErr  error
	}{
		{name: "HTTP/2 preface", send: append(append([]byte{}, preface...), "\x00\x00\x12\x04"...), wantH2: true, wantHead: preface},
		// Not HTTP/2: head is what was read, to be replayed to the relay:
		// a prefix of what was sent, reaching past the first byte that
		// differs from the preface.
		{name: "HTTP/1.1", send: []byte("GET / HTTP/1.1\r\n")},
		{name: "TLS ClientHello", send: []byte{0x16, 0x03, 0x01, 0x00, 0xa5}},
		{name: "diverges late", send: []byte("PRI * HTTP/1.1\r\n")},
		{name: "server speaks first: silence", wantHead: []byte{}},
		{name: "partial preface then silence", send: []byte("PRI * HT"), wantH2: true, wantHead: []byte("PRI * HT")},
		{name: "closed at once", closeW: true, wantErr: io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, s := tcpPair(t)
			if len(tc.send) > 0 {
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
			}
			if tc.closeW {
				c.(*net.TCPConn).CloseWrite()
			}
			head, h2, err := detect(s, 150*time.Millisecond)
			if err != tc.wantErr {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantHead == nil && tc.wantErr == nil {
				if h2 || !bytes.HasPrefix(tc.send, head) || bytes.HasPrefix(preface, head) {
					t.Errorf("detect = %q, h2 %v; want a non-preface prefix of %q", head, h2, tc.send)
				}
				return
			}
			if h2 != tc.wantH2 || !bytes.Equal(head, tc.wantHead) {
				t.Errorf("detect = %q, h2 %v; want %q, h2 %v", head, h2, tc.wantHead, tc.wantH2)
			}
		})
	}
}

// A connection that was not redirected carries no original destination:
// conntrack's answer, if any, is meshd's own address.
func TestServerHandshakeNotRedirected(t *testing.T) {
	t.Parallel()
	c := New(Options{})
	defer c.Close()
	_, s := tcpPair(t)
	conn, ai, err := c.ServerHandshake(s)
	if err != nil {
		t.Fatal(err)
	}
	if conn != s {
		t.Errorf("conn was wrapped: %T", conn)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: s.RemoteAddr(), AuthInfo: ai})
	if info, ok := FromContext(ctx); ok {
		t.Errorf("FromContext = %+v, want none", info)
	}
	if _, ok := ai.(Info); !ok || ai.(Info).SecurityLevel != credentials.NoSecurity {
		t.Errorf("AuthInfo = %#v", ai)
	}
}

func TestFromContext(t *testing.T) {
	t.Parallel()
	dst := netip.MustParseAddrPort("10.1.2.3:9000")
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: Info{Dst: dst, Inbound: true}})
	info, ok := FromContext(ctx)
	if !ok || info.Dst != dst || !info.Inbound {
		t.Errorf("FromContext = %+v, %v", info, ok)
	}
	if _, ok := FromContext(context.Background()); ok {
		t.Error("FromContext without a peer reported a destination")
	}
}

func TestReplayConn(t *testing.T) {
	t.Parallel()
	c, s := tcpPair(t)
	go func() { c.Write([]byte(" world")); c.Close() }()
	got, err := io.ReadAll(&replayConn{Conn: s, head: []byte("hello")})
	if err != nil || string(got) != "hello world" {
		t.Errorf("read %q, %v", got, err)
	}
}

// The opaque relay replays what detection read, carries both directions
// with half-close, and Close ends relays still running.
func TestRelay(t *testing.T) {
	t.Parallel()
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		for {
			conn, err := up.Accept()
			if err != nil {
				return
			}
			io.Copy(conn, conn) // echo until the client half-closes
			conn.Close()
		}
	}()
	c := New(Options{})
	dst := netip.MustParseAddrPort(up.Addr().String())

	client, server := tcpPair(t)
	c.r.start(server, []byte("head:"), dst, c.opts)
	client.Write([]byte("body"))
	client.(*net.TCPConn).CloseWrite()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "head:body" {
		t.Errorf("echo through the relay: %q, %v", got, err)
	}

	// A relay still open is ended by Close.
	client2, server2 := tcpPair(t)
	c.r.start(server2, nil, dst, c.opts)
	client2.Write([]byte("x"))
	buf := make([]byte, 1)
	client2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client2, buf); err != nil {
		t.Fatalf("relay 2: %v", err)
	}
	// Relay 1 ended for its client (EOF) a moment before its goroutine
	// leaves the count: poll for it.
	if !testkit.Poll(5*time.Second, 0, func() bool { return c.Relays() == 1 }) {
		t.Fatalf("Relays() = %d, want 1 (relay 1 done, relay 2 open)", c.Relays())
	}
	c.Close()
	if n := c.Relays(); n != 0 {
		t.Errorf("Relays() after Close = %d, want 0", n)
	}
	if _, err := client2.Read(buf); err == nil {
		t.Error("relay 2 still open after Close")
	}
	up.Close()
	<-upDone
}
