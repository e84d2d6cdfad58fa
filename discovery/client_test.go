package discovery_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery"
	"github.com/meshd/meshd/internal/consultest"
)

// TestNewConsulClient checks against real agents that the address and token
// come from CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN unless given explicitly. It
// sets the environment, so it cannot run in parallel.
func TestNewConsulClient(t *testing.T) {
	plain := sharedAgent(t)
	secure := consultest.Start(t, consultest.WithACLs("root-token"))
	const dead = "127.0.0.1:1" // nothing listens on port 1

	tests := []struct {
		name             string
		envAddr, envTok  string
		address, token   string
		wantAddr         string // agent expected to answer
		wantTokenAllowed bool   // for the ACL agent: a valid token was sent
	}{
		{name: "address from env", envAddr: plain.Addr, wantAddr: plain.Addr},
		{name: "explicit address wins", envAddr: dead, address: plain.Addr, wantAddr: plain.Addr},
		{name: "token from env", envTok: "root-token", address: secure.Addr, wantAddr: secure.Addr, wantTokenAllowed: true},
		{name: "explicit token wins over env", envTok: "no-such-token", address: secure.Addr, token: "root-token", wantAddr: secure.Addr, wantTokenAllowed: true},
		{name: "explicit token is sent", envTok: "root-token", address: secure.Addr, token: "no-such-token", wantAddr: secure.Addr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(api.HTTPAddrEnvName, tc.envAddr)
			t.Setenv(api.HTTPTokenEnvName, tc.envTok)
			c, err := discovery.NewConsulClient(tc.address, tc.token)
			if err != nil {
				t.Fatal(err)
			}
			// /v1/agent/self needs agent:read: the management token has
			// it, an unknown token gets 403 "ACL not found".
			self, err := c.Agent().Self()
			if tc.wantAddr == secure.Addr && !tc.wantTokenAllowed {
				var se api.StatusError
				if !errors.As(err, &se) || se.Code != http.StatusForbidden {
					t.Fatalf("want 403 for the explicit bad token, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Each agent has its own HTTP port: check which one answered.
			if got := self["DebugConfig"]["HTTPAddrs"]; !containsAddr(got, tc.wantAddr) {
				t.Fatalf("answered by an agent with HTTP addrs %v, want %s", got, tc.wantAddr)
			}
		})
	}
	t.Run("bad scheme", func(t *testing.T) {
		if _, err := discovery.NewConsulClient("ftp://127.0.0.1:8500", ""); err == nil {
			t.Fatal("no error for an unknown scheme")
		}
	})
}

func containsAddr(v any, addr string) bool {
	list, _ := v.([]any)
	for _, a := range list {
		if s, _ := a.(string); s == "tcp://"+addr {
			return true
		}
	}
	return false
}
