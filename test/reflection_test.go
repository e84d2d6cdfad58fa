package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"
	v1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/meshd/meshd/internal/testkit"
	"github.com/meshd/meshd/test/backend"
)

// reconnect is a second service for the second backend.
type reconnect struct {
	testgrpc.UnimplementedReconnectServiceServer
}

func (reconnect) Stop(context.Context, *testpb.Empty) (*testpb.ReconnectInfo, error) {
	return &testpb.ReconnectInfo{Passed: true, BackoffMs: []int32{7}}, nil
}

// reflect is one v1 reflection stream.
type reflectClient struct {
	t  *testing.T
	st v1.ServerReflection_ServerReflectionInfoClient
}

func (c *reflectClient) ask(req *v1.ServerReflectionRequest) *v1.ServerReflectionResponse {
	c.t.Helper()
	if err := c.st.Send(req); err != nil {
		c.t.Fatalf("reflection send: %v", err)
	}
	resp, err := c.st.Recv()
	if err != nil {
		c.t.Fatalf("reflection recv: %v", err)
	}
	return resp
}

func (c *reflectClient) list() []string {
	var out []string
	for _, s := range c.ask(&v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_ListServices{}}).GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	slices.Sort(out)
	return out
}

// describe returns the files FileContainingSymbol sends for sym, parsed.
func (c *reflectClient) describe(sym string) []*descriptorpb.FileDescriptorProto {
	c.t.Helper()
	resp := c.ask(&v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: sym}})
	if e := resp.GetErrorResponse(); e != nil {
		c.t.Fatalf("describe %s: %v", sym, e)
	}
	var fds []*descriptorpb.FileDescriptorProto
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			c.t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	return fds
}

// TestMergedReflection: two backends serving different services (and a
// third without reflection) behind one reflection listener: list shows
// the union of what the routes take, describe returns the owning
// backend's file with its dependencies, a method found by name is
// invoked through meshd, and /clusters shows the skipped backend.
func TestMergedReflection(t *testing.T) {
	t.Parallel()
	a := startBackends(t, "refl-a", 1, backend.WithRegister(func(s *grpc.Server) { reflection.Register(s) }))
	b := startBackends(t, "refl-b", 1, backend.WithoutTestService(), backend.WithRegister(func(s *grpc.Server) {
		testgrpc.RegisterReconnectServiceServer(s, reconnect{})
		reflection.Register(s)
	}))
	c := startBackends(t, "refl-c", 1) // no reflection
	m := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: main, address: 127.0.0.1:0, reflection: true}
drain_timeout: 5s
routes:
  - {name: test, match: {service: grpc.testing.TestService}, cluster: a}
  - {name: reconnect, match: {method: /grpc.testing.ReconnectService/Stop}, cluster: b}
  - {name: other, match: {service: grpc.testing.UnimplementedService}, cluster: c}
clusters:
  - {name: a, endpoints: %s}
  - {name: b, endpoints: %s}
  - {name: c, endpoints: %s}
`, addrs(a), addrs(b), addrs(c)))
	cc := dial(t, m.Addr)
	waitServing(t, cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Every cluster has a serving endpoint before the first view is built.
	testkit.WaitFor(t, 10*time.Second, "clusters b and c serving", func() bool {
		_, body := adminGet(t, m.Admin, "/clusters")
		return strings.Count(body, `"State": "serving"`) == 3
	})

	st, err := v1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc := &reflectClient{t: t, st: st}
	want := []string{"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "grpc.testing.ReconnectService", "grpc.testing.TestService"}
	if got := rc.list(); !slices.Equal(got, want) {
		t.Fatalf("list = %v, want %v (health is served but no route takes it)", got, want)
	}

	// describe: the file and its dependencies, enough to build it.
	fds := rc.describe("grpc.testing.ReconnectService")
	files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: fds})
	if err != nil {
		t.Fatalf("describe's files do not resolve (dependencies missing?): %v", err)
	}
	d, err := files.FindDescriptorByName("grpc.testing.ReconnectService.Stop")
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.MethodDescriptor)
	if n := len(rc.describe("grpc.testing.TestService.UnaryCall")); n == 0 {
		t.Fatal("describe of a method of the other backend's service returned nothing")
	}
	// A symbol nobody serves is NOT_FOUND.
	resp := rc.ask(&v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "no.such.Service"}})
	if resp.GetErrorResponse().GetErrorCode() != 5 {
		t.Fatalf("unknown symbol: %v", resp)
	}
	// FileByFilename answers from the merged files too.
	resp = rc.ask(&v1.ServerReflectionRequest{MessageRequest: &v1.ServerReflectionRequest_FileByFilename{FileByFilename: fds[0].GetName()}})
	if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("file by name %s: %v", fds[0].GetName(), resp)
	}
	_ = st.CloseSend()

	// Invoke by name, as grpcurl does: request and response built from
	// the descriptors reflection returned, the call routed by meshd.
	in := dynamicpb.NewMessage(md.Input())
	out := dynamicpb.NewMessage(md.Output())
	if err := cc.Invoke(ctx, "/grpc.testing.ReconnectService/Stop", in, out); err != nil {
		t.Fatalf("invoke by name: %v", err)
	}
	if !out.Get(md.Output().Fields().ByName("passed")).Bool() {
		t.Fatalf("invoke by name: %v", out)
	}

	// v1alpha is served too.
	ast, err := v1alpha.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ast.Send(&v1alpha.ServerReflectionRequest{MessageRequest: &v1alpha.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	aresp, err := ast.Recv()
	if err != nil || len(aresp.GetListServicesResponse().GetService()) != len(want) {
		t.Fatalf("v1alpha list: %v %v", aresp, err)
	}
	_ = ast.CloseSend()

	// The backend without reflection is skipped, and says so.
	_, body := adminGet(t, m.Admin, "/clusters")
	var cl map[string]struct {
		Reflection map[string]string `json:"reflection"`
	}
	if err := json.Unmarshal([]byte(body), &cl); err != nil {
		t.Fatal(err)
	}
	if s := cl["c"].Reflection["main"]; !strings.HasPrefix(s, "skipped") {
		t.Fatalf("/clusters c reflection = %q, want skipped", s)
	}
	if s := cl["b"].Reflection["main"]; !strings.HasPrefix(s, "ok") {
		t.Fatalf("/clusters b reflection = %q, want ok", s)
	}

	// Native calls on the listener are routed as usual.
	if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
}

// TestMergedReflectionPerListener: each reflection listener lists only
// the services its own routes reach; a route limited to the other
// listener does not show, and stays UNIMPLEMENTED there.
func TestMergedReflectionPerListener(t *testing.T) {
	t.Parallel()
	a := startBackends(t, "refl-la", 1, backend.WithRegister(func(s *grpc.Server) { reflection.Register(s) }))
	b := startBackends(t, "refl-lb", 1, backend.WithoutTestService(), backend.WithRegister(func(s *grpc.Server) {
		testgrpc.RegisterReconnectServiceServer(s, reconnect{})
		reflection.Register(s)
	}))
	m := startMesh(t, fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: public, address: 127.0.0.1:0, reflection: true}
  - {name: internal, address: %s, reflection: true}
drain_timeout: 5s
routes:
  - {name: test, listeners: [public], match: {service: grpc.testing.TestService}, cluster: a}
  - {name: reconnect, listeners: [internal], match: {service: grpc.testing.ReconnectService}, cluster: b}
clusters:
  - {name: a, endpoints: %s}
  - {name: b, endpoints: %s}
`, testkit.FreeAddr(t), addrs(a), addrs(b)))
	lis := m.srv.ListenerAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	testkit.WaitFor(t, 10*time.Second, "clusters a and b serving", func() bool {
		_, body := adminGet(t, m.Admin, "/clusters")
		return strings.Count(body, `"State": "serving"`) == 2
	})
	own := []string{"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
	tests := []struct {
		listener string
		service  string // the one its routes reach
	}{
		{"public", "grpc.testing.TestService"},
		{"internal", "grpc.testing.ReconnectService"},
	}
	for _, tt := range tests {
		t.Run(tt.listener, func(t *testing.T) {
			cc := dial(t, lis[tt.listener])
			st, err := v1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rc := &reflectClient{t: t, st: st}
			want := append(slices.Clone(own), tt.service)
			slices.Sort(want)
			if got := rc.list(); !slices.Equal(got, want) {
				t.Fatalf("list on %s = %v, want %v", tt.listener, got, want)
			}
			// (describe of the other service is not checked: both live in
			// grpc/testing/test.proto, which each backend serves whole.)
			if n := len(rc.describe(tt.service)); n == 0 {
				t.Fatalf("describe %s on %s returned nothing", tt.service, tt.listener)
			}
			_ = st.CloseSend()
		})
	}
}
