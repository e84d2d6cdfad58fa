package consultest

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// Shared is one agent for a whole test binary, for the tests that do not
// stop, restart or reconfigure it (they use distinct service names, so
// they can run in parallel). It starts on first use; Main closes it.
type Shared struct {
	once  sync.Once
	agent *Agent
	err   error
}

// Agent returns the shared agent, starting it on first use.
func (s *Shared) Agent(t testing.TB) *Agent {
	t.Helper()
	s.once.Do(func() { s.agent, s.err = Launch() })
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.agent
}

// Main is a TestMain: it runs the tests, closes the agent, runs the other
// shared fixtures' stops (after), then fails the binary on leaked
// goroutines. The agent must be gone before goleak looks: its clients'
// connections only close with it. klog's flush daemon (client-go's
// logger, started at init in packages that import it) is not a leak.
func (s *Shared) Main(m *testing.M, after ...func()) {
	code := m.Run()
	if s.agent != nil {
		s.agent.Close()
	}
	for _, f := range after {
		f()
	}
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
