package test

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// benchTargets starts one backend and one meshd in front of it and returns
// client connections keyed "direct" and "meshd", so every sub-benchmark of
// one run measures against the same backend.
func benchTargets(b *testing.B) (names []string, conns map[string]*grpc.ClientConn) {
	bs := startBackends(b, "bench", 1)
	m := startMesh(b, simpleConfig(bs, ""))
	cc := dial(b, m.Addr)
	waitServing(b, cc)
	return []string{"direct", "meshd"}, map[string]*grpc.ClientConn{"direct": dial(b, bs[0].Addr), "meshd": cc}
}

// BenchmarkUnary is one 1 KiB unary echo, direct vs through meshd. Compare
// ns/op of the sub-benchmarks from the same run (benchstat), never alone.
func BenchmarkUnary(b *testing.B) {
	names, conns := benchTargets(b)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	for _, n := range names {
		c := testpb.NewTestServiceClient(conns[n])
		b.Run(n, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.UnaryCall(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(n+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(25) // 50 concurrent calls on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.UnaryCall(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStreamMessage is one 1 KiB message of a server stream.
func BenchmarkStreamMessage(b *testing.B) {
	names, conns := benchTargets(b)
	for _, n := range names {
		c := testpb.NewTestServiceClient(conns[n])
		b.Run(n, func(b *testing.B) {
			b.ReportAllocs()
			params := make([]*testpb.ResponseParameters, b.N)
			for i := range params {
				params[i] = &testpb.ResponseParameters{Size: 1024}
			}
			b.ResetTimer()
			st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{ResponseParameters: params})
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := st.Recv(); err == io.EOF {
					break
				} else if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
