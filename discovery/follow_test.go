package discovery_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/testkit"
)

// TestFollowerKV follows one KV key: the first answer, and a change reach
// the caller; Status shows the loop synced.
func TestFollowerKV(t *testing.T) {
	t.Parallel()
	agent := sharedAgent(t)
	client := agent.Client
	key := "follow-test/" + t.Name()
	put := func(v string) {
		t.Helper()
		if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("a")
	f := discovery.NewFollower("kv "+key, func(q *api.QueryOptions) (string, *api.QueryMeta, error) {
		p, meta, err := client.KV().Get(key, q)
		if err != nil || p == nil {
			return "", meta, err
		}
		return string(p.Value), meta, nil
	}, discovery.WithWaitTime(10*time.Second))
	got := make(chan string, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, func(v string) { got <- v }) }()
	defer func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case v := <-got:
			if v != want {
				t.Fatalf("delivered %q, want %q", v, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing delivered, want %q", want)
		}
	}
	next("a")
	testkit.WaitFor(t, 5*time.Second, "status synced", func() bool { return f.Status().Synced })
	put("b")
	next("b")
	if st := f.Status(); !st.Healthy || st.Failures != 0 {
		t.Fatalf("status %+v, want healthy", st)
	}
}
