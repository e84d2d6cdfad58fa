package reflection

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcreflection "google.golang.org/grpc/reflection"
	v1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// DefaultTTL is how long a merged view is served before it is rebuilt
// (sooner when the config or the serving endpoints change).
const DefaultTTL = 30 * time.Second

// fetchTimeout bounds asking one backend.
const fetchTimeout = 5 * time.Second

// Backend is one cluster to ask: its name and a connection to one of its
// serving endpoints.
type Backend struct {
	Cluster string
	Conn    grpc.ClientConnInterface
	// Key identifies the endpoint asked (its address): a change rebuilds
	// the view.
	Key string
}

// Source is what the listener routes to now.
type Source struct {
	// Key identifies the config in force; a change rebuilds the view.
	Key any
	// Backends are the clusters the listener's routes reach, in route
	// order (the first to report a file owns it).
	Backends []Backend
	// Keep reports whether a route of the listener takes some method of
	// service when it goes to cluster.
	Keep func(service, cluster string) bool
}

// Merger serves the merged view. Safe for concurrent use.
type Merger struct {
	source func() Source
	ttl    time.Duration
	log    *slog.Logger

	mu     sync.Mutex // held while a view is built: one build at a time
	cur    *view
	status map[string]string // by cluster: "ok: N services" or why skipped
}

// view is one merged registry.
type view struct {
	key      any
	epKey    string
	built    time.Time
	services map[string]grpc.ServiceInfo
	files    *protoregistry.Files
	types    *dynamicpb.Types
}

// New returns a Merger over source, with views kept for ttl (0:
// DefaultTTL).
func New(source func() Source, ttl time.Duration, log *slog.Logger) *Merger {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Merger{source: source, ttl: ttl, log: log, status: map[string]string{}}
}

// Register registers grpc.reflection.v1 and v1alpha, answered from the
// merged view, on s.
func (m *Merger) Register(s *grpc.Server) {
	opts := grpcreflection.ServerOptions{Services: m, DescriptorResolver: m, ExtensionResolver: m}
	v1.RegisterServerReflectionServer(s, grpcreflection.NewServerV1(opts))
	v1alpha.RegisterServerReflectionServer(s, grpcreflection.NewServer(opts))
}

// Status returns, by cluster, whether its backends' reflection was used.
func (m *Merger) Status() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string, len(m.status))
	for k, v := range m.status {
		out[k] = v
	}
	return out
}

// Invalidate drops the view; the next query rebuilds it.
func (m *Merger) Invalidate() {
	m.mu.Lock()
	m.cur = nil
	m.mu.Unlock()
}

// current returns the view in force, rebuilding it when stale.
func (m *Merger) current() *view {
	src := m.source()
	epKey := endpointsKey(src.Backends)
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.cur; v != nil && v.key == src.Key && v.epKey == epKey && time.Since(v.built) < m.ttl {
		return v
	}
	m.cur = m.build(src, epKey)
	return m.cur
}

func endpointsKey(bs []Backend) string {
	var b strings.Builder
	for _, be := range bs {
		b.WriteString(be.Cluster)
		b.WriteByte('=')
		b.WriteString(be.Key)
		b.WriteByte(';')
	}
	return b.String()
}

// reported is what one backend said.
type reported struct {
	services []string
	files    []*descriptorpb.FileDescriptorProto
	err      error
}

// build asks every backend at once and merges what they report.
func (m *Merger) build(src Source, epKey string) *view {
	res := make([]reported, len(src.Backends))
	var wg sync.WaitGroup
	for i, b := range src.Backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
			defer cancel()
			res[i] = fetch(ctx, b.Conn)
		}()
	}
	wg.Wait()

	v := &view{key: src.Key, epKey: epKey, built: time.Now(), services: map[string]grpc.ServiceInfo{}}
	// meshd's own reflection services are listed and described too.
	own := []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(v1.File_grpc_reflection_v1_reflection_proto),
		protodesc.ToFileDescriptorProto(v1alpha.File_grpc_reflection_v1alpha_reflection_proto),
	}
	set := &descriptorpb.FileDescriptorSet{File: own}
	seen := map[string]bool{}
	for _, f := range own {
		seen[f.GetName()] = true
	}
	files, _ := protodesc.NewFiles(set)
	status := map[string]string{}
	for i, b := range src.Backends {
		r := res[i]
		if r.err != nil {
			status[b.Cluster] = "skipped: " + r.err.Error()
			m.log.Info("reflection: backend skipped", "cluster", b.Cluster, "endpoint", b.Key, "err", r.err)
			continue
		}
		cand := &descriptorpb.FileDescriptorSet{File: append([]*descriptorpb.FileDescriptorProto(nil), set.File...)}
		var added []string
		for _, f := range r.files {
			if !seen[f.GetName()] {
				cand.File = append(cand.File, f)
				added = append(added, f.GetName())
			}
		}
		nf, err := protodesc.NewFiles(cand)
		if err != nil {
			status[b.Cluster] = "skipped: its descriptors do not resolve: " + err.Error()
			continue
		}
		set, files = cand, nf
		for _, n := range added {
			seen[n] = true
		}
		kept := 0
		for _, svc := range r.services {
			if isReflection(svc) || (src.Keep != nil && !src.Keep(svc, b.Cluster)) {
				continue
			}
			if _, err := files.FindDescriptorByName(protoreflect.FullName(svc)); err != nil {
				continue // listed but not described: nothing to offer
			}
			v.services[svc] = grpc.ServiceInfo{}
			kept++
		}
		status[b.Cluster] = fmt.Sprintf("ok: %d services routed from this listener", kept)
	}
	v.services[v1.ServerReflection_ServiceDesc.ServiceName] = grpc.ServiceInfo{}
	v.services[v1alpha.ServerReflection_ServiceDesc.ServiceName] = grpc.ServiceInfo{}
	v.files = files
	v.types = dynamicpb.NewTypes(files)
	for k, s := range status {
		m.status[k] = s
	}
	return v
}

func isReflection(svc string) bool { return strings.HasPrefix(svc, "grpc.reflection.") }

// fetch asks one backend for its services and the files that define
// them, with their dependencies: v1, or v1alpha if v1 is not served.
func fetch(ctx context.Context, cc grpc.ClientConnInterface) reported {
	r := fetchV1(ctx, cc)
	if status.Code(r.err) == codes.Unimplemented {
		alpha := fetchV1alpha(ctx, cc)
		if alpha.err == nil || status.Code(alpha.err) != codes.Unimplemented {
			return alpha
		}
		r.err = errors.New("no server reflection (v1 and v1alpha UNIMPLEMENTED)")
	}
	return r
}

// asker is one reflection stream, v1 or v1alpha, reduced to the two
// questions fetch asks: the services, and the files declaring a symbol
// (found false when the backend answers with an error response).
type asker interface {
	services() ([]string, error)
	fileFor(symbol string) (files [][]byte, found bool, err error)
}

// walk asks a backend for its services and the files of each, with their
// dependencies.
func walk(a asker) (r reported) {
	svcs, err := a.services()
	if err != nil {
		return reported{err: err}
	}
	r.services = svcs
	sort.Strings(r.services)
	for _, svc := range r.services {
		if isReflection(svc) {
			continue
		}
		files, found, err := a.fileFor(svc)
		if err != nil {
			return reported{err: err}
		}
		if !found {
			continue
		}
		if err := addFiles(&r, files); err != nil {
			return reported{err: err}
		}
	}
	return r
}

// roundTrip sends req on a bidirectional stream and reads the answer. A
// Send that fails with io.EOF means the server ended the stream: its
// status comes with the next Recv.
func roundTrip[Req, Resp any](send func(Req) error, recv func() (Resp, error), req Req) (Resp, error) {
	if err := send(req); err != nil {
		var zero Resp
		if err == io.EOF {
			_, err = recv()
		}
		return zero, err
	}
	return recv()
}

type v1Asker struct {
	st v1.ServerReflection_ServerReflectionInfoClient
}

func (a v1Asker) services() ([]string, error) {
	resp, err := roundTrip(a.st.Send, a.st.Recv, &v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_ListServices{}})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	return out, nil
}

func (a v1Asker) fileFor(symbol string) ([][]byte, bool, error) {
	resp, err := roundTrip(a.st.Send, a.st.Recv, &v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
	if err != nil || resp.GetErrorResponse() != nil {
		return nil, false, err
	}
	return resp.GetFileDescriptorResponse().GetFileDescriptorProto(), true, nil
}

type v1alphaAsker struct {
	st v1alpha.ServerReflection_ServerReflectionInfoClient
}

func (a v1alphaAsker) services() ([]string, error) {
	resp, err := roundTrip(a.st.Send, a.st.Recv, &v1alpha.ServerReflectionRequest{MessageRequest: &v1alpha.ServerReflectionRequest_ListServices{}})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	return out, nil
}

func (a v1alphaAsker) fileFor(symbol string) ([][]byte, bool, error) {
	resp, err := roundTrip(a.st.Send, a.st.Recv, &v1alpha.ServerReflectionRequest{MessageRequest: &v1alpha.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
	if err != nil || resp.GetErrorResponse() != nil {
		return nil, false, err
	}
	return resp.GetFileDescriptorResponse().GetFileDescriptorProto(), true, nil
}

func fetchV1(ctx context.Context, cc grpc.ClientConnInterface) reported {
	st, err := v1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return reported{err: err}
	}
	defer st.CloseSend()
	return walk(v1Asker{st})
}

func fetchV1alpha(ctx context.Context, cc grpc.ClientConnInterface) reported {
	st, err := v1alpha.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return reported{err: err}
	}
	defer st.CloseSend()
	return walk(v1alphaAsker{st})
}

func addFiles(r *reported, raw [][]byte) error {
	for _, b := range raw {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			return fmt.Errorf("reflection: backend sent a malformed file descriptor: %w", err)
		}
		r.files = append(r.files, fd)
	}
	return nil
}

// GetServiceInfo implements grpc-go reflection's ServiceInfoProvider:
// the merged service names.
func (m *Merger) GetServiceInfo() map[string]grpc.ServiceInfo { return m.current().services }

// FindFileByPath implements protodesc.Resolver.
func (m *Merger) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	return m.current().files.FindFileByPath(path)
}

// FindDescriptorByName implements protodesc.Resolver.
func (m *Merger) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	return m.current().files.FindDescriptorByName(name)
}

// FindExtensionByName implements protoregistry.ExtensionTypeResolver.
func (m *Merger) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return m.current().types.FindExtensionByName(field)
}

// FindExtensionByNumber implements protoregistry.ExtensionTypeResolver.
func (m *Merger) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return m.current().types.FindExtensionByNumber(message, field)
}

// RangeExtensionsByMessage implements grpc-go reflection's
// ExtensionResolver.
func (m *Merger) RangeExtensionsByMessage(message protoreflect.FullName, f func(protoreflect.ExtensionType) bool) {
	more := true
	var visit func(xds protoreflect.ExtensionDescriptors, mds protoreflect.MessageDescriptors)
	visit = func(xds protoreflect.ExtensionDescriptors, mds protoreflect.MessageDescriptors) {
		for i := 0; more && i < xds.Len(); i++ {
			if xd := xds.Get(i); xd.ContainingMessage().FullName() == message {
				more = f(dynamicpb.NewExtensionType(xd))
			}
		}
		for i := 0; more && i < mds.Len(); i++ {
			visit(mds.Get(i).Extensions(), mds.Get(i).Messages())
		}
	}
	m.current().files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		visit(fd.Extensions(), fd.Messages())
		return more
	})
}
