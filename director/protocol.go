package director

import "context"

// ProtocolGRPCWeb is the protocol of calls that arrived as gRPC-Web and
// were translated into native calls (package grpcweb).
const ProtocolGRPCWeb = "grpc-web"

type protocolKey struct{}

// WithProtocol marks the calls of a connection served with ctx as having
// arrived in protocol p (ProtocolGRPCWeb); they are recorded with it
// (callrecord.Call.Protocol). Native calls carry no mark.
func WithProtocol(ctx context.Context, p string) context.Context {
	return context.WithValue(ctx, protocolKey{}, p)
}

func protocolOf(ctx context.Context) string {
	p, _ := ctx.Value(protocolKey{}).(string)
	return p
}
