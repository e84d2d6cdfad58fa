package h2raw

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// Authority is the :authority of the requests Request builds.
const Authority = "meshd.test"

// Request is the header list of a gRPC call on path as a client sends it:
// :method POST, :scheme http, :path, :authority, content-type
// application/grpc and te trailers, in that order, then the extra fields,
// given as name, value pairs.
func Request(path string, extra ...string) []hpack.HeaderField {
	hf := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: Authority},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		hf = append(hf, hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return hf
}

// Block HPACK-encodes fields with an encoder of its own, which the
// connection's encoder knows nothing about: fields it adds to the peer's
// dynamic table are never referenced, so the block may be sent any number
// of times, or not at all. A field marked Sensitive stays out of the table.
func Block(fields ...hpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range fields {
		_ = enc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	return b.Bytes()
}

// Message frames payload as one uncompressed gRPC message: a zero
// compression flag and the payload's length, 4 bytes big-endian, before it.
func Message(payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// MarshalMessage is Message of m's encoding; it fails the test if m does
// not marshal.
func MarshalMessage(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return Message(b)
}
