package origdst

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Info is the credentials.AuthInfo of a connection accepted through
// Credentials; every call on the connection finds it with FromContext.
type Info struct {
	credentials.CommonAuthInfo
	// Dst is where the client was headed before iptables redirected it to
	// meshd. It is the zero AddrPort when the connection was not redirected.
	Dst netip.AddrPort
	// Inbound says the listener takes traffic into the pod (direction
	// inbound) rather than out of it.
	Inbound bool
}

// AuthType implements credentials.AuthInfo.
func (Info) AuthType() string { return "original_dst" }

// FromContext returns the Info of the call's connection when that connection
// was redirected, that is, when it has an original destination.
func FromContext(ctx context.Context) (Info, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Info{}, false
	}
	info, ok := p.AuthInfo.(Info)
	if !ok || !info.Dst.IsValid() {
		return Info{}, false
	}
	return info, true
}

// Options configures Credentials. The zero value is usable.
type Options struct {
	// Inbound marks a listener for traffic into the pod.
	Inbound bool
	// DetectTimeout is how long to wait for a redirected connection's first
	// bytes before relaying it as opaque TCP. Default 1s.
	DetectTimeout time.Duration
	// DialTimeout bounds connecting to the original destination of an
	// opaque TCP relay. Default 10s.
	DialTimeout time.Duration
	// Logger receives relay failures at debug level. Default: discard.
	Logger *slog.Logger
	// AdmitOpaque, if set, decides whether a connection detected as
	// opaque TCP may be relayed: an error ends the handshake with it (the
	// caller closes the connection) and the original destination is never
	// dialed. A mesh listener authorizes the peer here, since opaque
	// traffic never reaches the per-call authorization.
	AdmitOpaque func(conn net.Conn, dst netip.AddrPort) error
}

// Credentials is the listener side of transparent interception. Install it
// with grpc.Creds on an original_dst listener's grpc.Server; Close it after
// the server has stopped, to end the opaque TCP relays it started.
//
// Its methods are safe for concurrent use.
type Credentials struct {
	opts Options
	r    *relays
}

var _ credentials.TransportCredentials = (*Credentials)(nil)

// New returns Credentials with opts.
func New(opts Options) *Credentials {
	if opts.DetectTimeout <= 0 {
		opts.DetectTimeout = time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &relays{conns: map[net.Conn]struct{}{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return &Credentials{opts: opts, r: r}
}

// preface is the HTTP/2 client connection preface (RFC 9113 §3.4): every
// gRPC connection starts with it, and no other common protocol does.
var preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// handshakeTimeout restores a read deadline for grpc-go's own preface read
// after detection replaced the one grpc-go set (its ConnectionTimeout
// default, which meshd does not change).
const handshakeTimeout = 120 * time.Second

// ServerHandshake reads the connection's original destination. A
// redirected connection that starts with the HTTP/2 preface is returned to
// grpc-go with its first bytes replayed; one that does not is relayed to
// its original destination and dispatched out of gRPC.
func (c *Credentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := Info{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Inbound: c.opts.Inbound}
	dst, ok, err := originalDst(unwrap(raw))
	if err != nil {
		return nil, nil, err
	}
	// conntrack knows every tracked connection's original tuple; for one
	// that was not NATed it is the address the client reached, meshd's own.
	if !ok || dst == addrPort(raw.LocalAddr()) {
		return raw, info, nil
	}
	info.Dst = dst
	head, h2, err := detect(raw, c.opts.DetectTimeout)
	if err != nil {
		return nil, nil, err
	}
	if h2 {
		return &replayConn{Conn: raw, head: head}, info, nil
	}
	if c.opts.AdmitOpaque != nil {
		if err := c.opts.AdmitOpaque(raw, dst); err != nil {
			return nil, nil, err
		}
	}
	c.r.start(raw, head, dst, c.opts)
	return nil, nil, credentials.ErrConnDispatched
}

// detect reads until the HTTP/2 preface is complete, a byte differs from it,
// or the client stays silent for timeout (a protocol where the server speaks
// first). It returns what it read, to be replayed.
func detect(conn net.Conn, timeout time.Duration) ([]byte, bool, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, false, err
	}
	buf := make([]byte, len(preface))
	n := 0
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		n += m
		if !bytes.Equal(buf[:n], preface[:n]) {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Silence: opaque. A partial preface: let grpc-go judge it.
				if n == 0 {
					break
				}
				return buf[:n], true, conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
			}
			if n == 0 && errors.Is(err, io.EOF) {
				return nil, false, io.EOF
			}
			return nil, false, err
		}
	}
	h2 := n == len(buf) && bytes.Equal(buf, preface)
	deadline := time.Time{}
	if h2 {
		deadline = time.Now().Add(handshakeTimeout)
	}
	return buf[:n], h2, conn.SetReadDeadline(deadline)
}

// ClientHandshake implements credentials.TransportCredentials; the
// credentials are for listeners only.
func (c *Credentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("origdst: client handshake not supported")
}

// Info implements credentials.TransportCredentials.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "original_dst"}
}

// Clone implements credentials.TransportCredentials; the clone shares the
// relays, so closing either closes them.
func (c *Credentials) Clone() credentials.TransportCredentials {
	return &Credentials{opts: c.opts, r: c.r}
}

// OverrideServerName implements credentials.TransportCredentials.
//
// Deprecated: unused by servers.
func (c *Credentials) OverrideServerName(string) error { return nil }

// Relays returns the number of opaque TCP relays in progress.
func (c *Credentials) Relays() int {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	return c.r.active
}

// Close ends every opaque TCP relay and waits for their goroutines.
// Connections dispatched after Close are closed at once.
func (c *Credentials) Close() { c.r.close() }

// unwrap returns the connection under listener wrappers (a connection
// limit) that expose it with NetConn, as crypto/tls.Conn does.
func unwrap(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = u.NetConn()
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// replayConn returns head before reading from Conn.
type replayConn struct {
	net.Conn
	head []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the wrapped connection.
func (c *replayConn) NetConn() net.Conn { return c.Conn }

// relays tracks the opaque TCP relays so Close can end them.
type relays struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	active int
	// ctx is cancelled by close, ending dials in progress.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// track adds conn; it returns false (and closes conn) after close.
func (r *relays) track(conn net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		conn.Close()
		return false
	}
	r.conns[conn] = struct{}{}
	return true
}

func (r *relays) untrack(conn net.Conn) {
	r.mu.Lock()
	delete(r.conns, conn)
	r.mu.Unlock()
	conn.Close()
}

// start relays client to dst on a goroutine the relays own.
func (r *relays) start(client net.Conn, head []byte, dst netip.AddrPort, opts Options) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		client.Close()
		return
	}
	r.conns[client] = struct{}{}
	r.active++
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			r.active--
			r.mu.Unlock()
		}()
		defer r.untrack(client)
		ctx, cancel := context.WithTimeout(r.ctx, opts.DialTimeout)
		d := net.Dialer{}
		up, err := d.DialContext(ctx, "tcp", dst.String())
		cancel()
		if err != nil {
			opts.Logger.Debug("opaque relay: dial original destination", "dst", dst, "err", err)
			return
		}
		if !r.track(up) {
			return
		}
		defer r.untrack(up)
		if len(head) > 0 {
			if _, err := up.Write(head); err != nil {
				return
			}
		}
		pipe(client, up)
	}()
}

// pipe copies both ways, passing each side's half-close on, until both
// directions are done.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it
// cannot half-close) so the far side sees EOF.
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := unwrap(dst).(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite() // the peer may be gone already; nothing to tell
		return
	}
	// An error on one side ends the relay: closing both wakes the other copy.
	dst.Close()
	src.Close()
}

func (r *relays) close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		r.cancel()
		for c := range r.conns {
			c.Close()
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
}
