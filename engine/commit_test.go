package engine

import (
	"context"
	"testing"
	"time"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testkit"
)

// TestCommittedCallDropsRequestHeaders: once a call commits (the backend's
// response HEADERS went to the client), no other attempt can follow, and
// the call lets go of the upstream request HEADERS it kept for one; a
// long-lived stream would otherwise hold them for its whole life.
func TestCommittedCallDropsRequestHeaders(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := &testBackend{streamOut: func(_ *testpb.StreamingOutputCallRequest, s testgrpc.TestService_StreamingOutputCallServer) error {
		if err := s.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
		select { // an idle stream until the test is done with it
		case <-release:
		case <-s.Context().Done():
		}
		return nil
	}}
	p, client := setup(t, b, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	// The one call in the Server: committed, its request fields gone.
	held := func() (found, committed, fields bool) {
		var calls []*call
		p.srv.mu.Lock()
		for sc := range p.srv.conns {
			sc.mu.Lock()
			for _, hs := range sc.streams {
				if hs.call != nil {
					calls = append(calls, hs.call)
				}
			}
			sc.mu.Unlock()
		}
		p.srv.mu.Unlock()
		for _, cl := range calls { // each call's lock alone, as the engine takes it
			cl.mu.Lock()
			found, committed, fields = true, cl.stateLocked() == callCommitted, cl.reqFields != nil
			cl.mu.Unlock()
		}
		return
	}
	if !testkit.Poll(3*time.Second, 0, func() bool { found, committed, _ := held(); return found && committed }) {
		t.Fatal("no committed call in the Server while the stream is open")
	}
	if _, _, fields := held(); fields {
		t.Error("a committed call still holds its upstream request HEADERS")
	}
	close(release)
	if _, err := st.Recv(); err == nil {
		t.Error("the stream did not end")
	}
}
