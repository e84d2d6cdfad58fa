package proxy

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// frame is one gRPC message's bytes, held by reference.
type frame struct {
	data mem.BufferSlice
}

// free releases the frame's buffers if they were not handed on.
func (f *frame) free() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// passCodec moves message bytes without parsing them.
//
// It is the default codec of every upstream connection, which also carries
// meshd's own typed RPCs (grpc.health.v1 Watch): those messages are not
// frames and go to the proto codec.
//
// Unmarshal takes its own reference on the received buffers (grpc frees its
// reference when Unmarshal returns); Marshal hands that reference to grpc,
// which frees it once the bytes are written. So a message crosses meshd with
// no copy and no protobuf work.
type passCodec struct{}

var _ encoding.CodecV2 = passCodec{}

func (passCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return protoCodec().Marshal(v)
	}
	d := f.data
	f.data = nil
	return d, nil
}

func (passCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return protoCodec().Unmarshal(data, v)
	}
	data.Ref()
	f.data = data
	return nil
}

// Name is empty so the upstream content-type is plain "application/grpc"
// (grpc-go appends "+name" for a non-empty codec name).
func (passCodec) Name() string { return "" }

// protoCodec is grpc-go's registered proto codec, for typed messages.
func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2(proto.Name) }
