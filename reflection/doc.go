// Package reflection is meshd's merged gRPC server reflection: on a
// listener with `reflection: true` meshd answers
// grpc.reflection.v1.ServerReflection and v1alpha itself, with what the
// backends behind the listener's routes report.
//
// Where its parts live:
//   - merge.go: Merger asks one serving endpoint of each cluster for its
//     services and their files (with dependencies), over the endpoint's
//     grpc-go connection (the one health watching uses, with the
//     cluster's TLS), and builds one registry: ListServices is the union,
//     filtered by the routes; FileContainingSymbol, FileByFilename and
//     the extension queries are answered from it by grpc-go's own
//     reflection server (a file two clusters report is taken from the
//     first, in route order). The result is cached for TTL and rebuilt
//     when the config or a cluster's serving endpoints change. A backend
//     without reflection is skipped; Status says why, for /clusters.
//   - server/reflection.go: the listener's Director answers the two
//     reflection methods with a local target, an in-process grpc-go
//     server reached over a socketpair; every other method is routed as
//     usual.
package reflection
