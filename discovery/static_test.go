package discovery_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/meshd/meshd/discovery"
)

func TestStatic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []discovery.Endpoint
		want []discovery.Endpoint
	}{
		{
			name: "defaults and order",
			in: []discovery.Endpoint{
				{Address: "127.0.0.1:9002"},
				{Address: "127.0.0.1:9001", Weight: 5},
			},
			want: []discovery.Endpoint{
				{ID: "127.0.0.1:9001", Address: "127.0.0.1:9001", Weight: 5},
				{ID: "127.0.0.1:9002", Address: "127.0.0.1:9002", Weight: 1},
			},
		},
		{
			name: "duplicates keep the first",
			in: []discovery.Endpoint{
				{Address: "127.0.0.1:9001", Weight: 2},
				{Address: "127.0.0.1:9001", Weight: 3},
			},
			want: []discovery.Endpoint{{ID: "127.0.0.1:9001", Address: "127.0.0.1:9001", Weight: 2}},
		},
		{
			name: "empty",
			in:   nil,
			want: []discovery.Endpoint{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := append([]discovery.Endpoint(nil), tc.in...)
			s := discovery.NewStatic(in)
			if len(in) > 0 {
				in[0].Address = "changed-by-caller:1" // NewStatic copied
			}
			w := startWatch(t, s)
			got := w.next(5 * time.Second)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("snapshot:\n got %+v\nwant %+v", got, tc.want)
			}
			if len(got) > 0 {
				got[0].Address = "changed-by-consumer:1" // the consumer owns its copy
			}
			// A second watcher gets the original list, and each watcher
			// gets exactly one snapshot.
			w2 := startWatch(t, s)
			w2.expect(5*time.Second, tc.want)
			w.none()
			w2.none()
		})
	}
}

func TestStaticCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sent := false
	err := discovery.NewStatic([]discovery.Endpoint{{Address: "127.0.0.1:1"}}).Watch(ctx, func([]discovery.Endpoint) { sent = true })
	if err != context.Canceled || sent {
		t.Fatalf("Watch on a done ctx: err %v, sent %v", err, sent)
	}
}
