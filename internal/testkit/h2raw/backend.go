package h2raw

import (
	"bytes"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/internal/testkit"
)

// ServerConn is one connection of a backend StartBackend runs, as its
// frame handler sees it: the framer (the connection's one goroutine reads
// and writes, so it needs no lock) and an HPACK encoder for the
// connection's response header blocks.
type ServerConn struct {
	*http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

// EncodeHeaders HPACK-encodes fields with the connection's encoder; the
// block must be sent, in order with the connection's other blocks.
func (sc *ServerConn) EncodeHeaders(fields ...hpack.HeaderField) []byte {
	sc.buf.Reset()
	for _, f := range fields {
		_ = sc.enc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	return bytes.Clone(sc.buf.Bytes())
}

// StartBackend runs a hand-written HTTP/2 server on a loopback port until
// the test ends, to play a backend that misbehaves on purpose. On each
// connection it reads the client preface, sends its SETTINGS, then reads
// frames, acknowledging SETTINGS, and hands every frame (header blocks
// decoded) to onFrame; an error from onFrame ends the connection. It
// answers nothing else, not even PING: onFrame decides.
func StartBackend(tb testing.TB, onFrame func(sc *ServerConn, f http2.Frame) error) *testkit.TCPServer {
	tb.Helper()
	return testkit.ServeLoopback(tb, func(nc net.Conn) {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
			return
		}
		sc := &ServerConn{Framer: http2.NewFramer(nc, nc)}
		sc.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		sc.enc = hpack.NewEncoder(&sc.buf)
		if sc.WriteSettings() != nil {
			return
		}
		for {
			f, err := sc.ReadFrame()
			if err != nil {
				return
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() && sc.WriteSettingsAck() != nil {
				return
			}
			if onFrame(sc, f) != nil {
				return
			}
		}
	})
}
