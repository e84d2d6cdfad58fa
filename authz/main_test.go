package authz_test

import (
	"testing"

	"github.com/meshd/meshd/internal/consultest"
)

// shared is one Consul agent for the tests that do not stop, restart or
// reconfigure it; TestMain closes it.
var shared consultest.Shared

func sharedAgent(t *testing.T) *consultest.Agent { return shared.Agent(t) }

func TestMain(m *testing.M) { shared.Main(m) }
