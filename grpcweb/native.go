package grpcweb

import (
	"errors"
	"net"
	"net/http"
	"sync"

	"golang.org/x/net/http2"
)

// ErrNativeClosed is returned by Native.RoundTrip after Close.
var ErrNativeClosed = errors.New("grpcweb: native transport closed")

// Native carries the translated calls of one client connection to meshd's
// engine: HTTP/2 over connections that dial opens (meshd: one end of a
// socketpair whose other end the engine serves, with the client's address
// as its remote address). One connection serves every call of the client
// connection; another is opened only when it cannot take more (the engine
// sent GOAWAY: drain, max_connection_age). Close it when the client
// connection closes. Safe for concurrent use.
type Native struct {
	dial func() (net.Conn, error)
	t    *http2.Transport

	mu     sync.Mutex
	ccs    []*http2.ClientConn // the last one takes new calls
	closed bool
}

var _ http.RoundTripper = (*Native)(nil)

// NewNative returns a Native that opens its connections with dial.
func NewNative(dial func() (net.Conn, error)) *Native {
	return &Native{dial: dial, t: &http2.Transport{AllowHTTP: true, DisableCompression: true}}
}

// RoundTrip makes one native call.
func (n *Native) RoundTrip(req *http.Request) (*http.Response, error) {
	cc, err := n.conn()
	if err != nil {
		return nil, err
	}
	return cc.RoundTrip(req)
}

// conn returns a connection that can take a new call, opening one if
// needed; connections that closed are forgotten.
func (n *Native) conn() (*http2.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrNativeClosed
	}
	if k := len(n.ccs); k > 0 && n.ccs[k-1].CanTakeNewRequest() {
		return n.ccs[k-1], nil
	}
	live := n.ccs[:0]
	for _, cc := range n.ccs {
		if !cc.State().Closed {
			live = append(live, cc)
		}
	}
	n.ccs = live
	c, err := n.dial()
	if err != nil {
		return nil, err
	}
	cc, err := n.t.NewClientConn(c)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	n.ccs = append(n.ccs, cc)
	return cc, nil
}

// Close closes every connection; calls still on them fail.
func (n *Native) Close() error {
	n.mu.Lock()
	ccs := n.ccs
	n.ccs, n.closed = nil, true
	n.mu.Unlock()
	for _, cc := range ccs {
		_ = cc.Close()
	}
	return nil
}
