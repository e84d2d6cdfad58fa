package discovery

import (
	"fmt"

	"github.com/hashicorp/consul/api"
)

// NewConsulClient builds a Consul API client the way the consul CLI does:
// address "" means CONSUL_HTTP_ADDR, else localhost:8500; the token comes
// from CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) unless token is given,
// which wins. The other CONSUL_HTTP_* and CONSUL_CA* variables (TLS, basic
// auth) are honoured too. address may carry a scheme: "https://host:port",
// "unix:///path".
func NewConsulClient(address, token string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if address != "" {
		cfg.Address = address
	}
	if token != "" {
		cfg.Token = token
		cfg.TokenFile = ""
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery: consul client for %q: %w", cfg.Address, err)
	}
	return c, nil
}
