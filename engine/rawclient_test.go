package engine

import (
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/internal/testkit/h2raw"
)

// rawClient is the RFC 9113 table's view of testkit's raw HTTP/2 client:
// the table's steps write frames through fr and read with next.
type rawClient struct {
	*h2raw.Conn
	t  testing.TB
	fr rawWriter
}

func newRawClient(t testing.TB, addr string) *rawClient {
	c := h2raw.New(t, addr)
	return &rawClient{Conn: c, t: t, fr: rawWriter{c}}
}

func (rc *rawClient) next(what string, match func(http2.Frame) bool) http2.Frame {
	rc.t.Helper()
	return rc.Next(what, match)
}

func (rc *rawClient) headers(id uint32, fields []hpack.HeaderField, endStream bool) {
	rc.t.Helper()
	rc.Headers(id, fields, endStream)
}

func (rc *rawClient) ping() { rc.t.Helper(); rc.Ping() }

// rawWriter sends one frame at a time through the connection's framer.
type rawWriter struct{ c *h2raw.Conn }

func (w rawWriter) WriteData(id uint32, end bool, p []byte) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WriteData(id, end, p) })
}

func (w rawWriter) WriteHeaders(p http2.HeadersFrameParam) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WriteHeaders(p) })
}

func (w rawWriter) WritePing(ack bool, data [8]byte) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WritePing(ack, data) })
}

func (w rawWriter) WritePriority(id uint32, p http2.PriorityParam) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WritePriority(id, p) })
}

func (w rawWriter) WriteRSTStream(id uint32, code http2.ErrCode) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

func (w rawWriter) WriteWindowUpdate(id, incr uint32) error {
	return w.c.Write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, incr) })
}

// grpcRequestHeaders and grpcMessage are h2raw's request header list and
// message framing under the table's names.
func grpcRequestHeaders(path string, extra ...string) []hpack.HeaderField {
	return h2raw.Request(path, extra...)
}

func grpcMessage(t testing.TB, m proto.Message) []byte { return h2raw.MarshalMessage(t, m) }

// blackHole is a loopback address that accepts and never answers.
func blackHole(t testing.TB) string { return testkit.BlackHole(t).Addr() }

// rawFrameBackend serves raw HTTP/2 with handle called for every frame a
// client (meshd) sends, and returns its address.
func rawFrameBackend(t testing.TB, handle func(fr *http2.Framer, f http2.Frame)) string {
	return h2raw.StartBackend(t, func(sc *h2raw.ServerConn, f http2.Frame) error {
		handle(sc.Framer, f)
		return nil
	}).Addr()
}
