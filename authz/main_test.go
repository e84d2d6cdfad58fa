package authz_test

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/internal/consultest"
)

// shared is one Consul agent for the tests that do not stop or restart it;
// they use distinct destination names, so they can run in parallel. It
// starts on first use and TestMain closes it.
var shared struct {
	once  sync.Once
	agent *consultest.Agent
	err   error
}

func sharedAgent(t *testing.T) *consultest.Agent {
	t.Helper()
	shared.once.Do(func() { shared.agent, shared.err = consultest.Launch() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.agent
}

func TestMain(m *testing.M) {
	code := m.Run()
	// The agent must be gone before goleak looks: its client's connections
	// only close with it.
	if shared.agent != nil {
		shared.agent.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
