package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestIptablesRules(t *testing.T) {
	t.Parallel()
	base := iptablesOptions{InboundPort: 15006, OutboundPort: 15001, ProxyUID: 1337, ProxyGID: -1}
	head := "*nat\n:MESHD_INBOUND - [0:0]\n:MESHD_IN_REDIRECT - [0:0]\n:MESHD_OUTBOUND - [0:0]\n:MESHD_OUT_REDIRECT - [0:0]\n"
	for _, tc := range []struct {
		name    string
		opts    func(o *iptablesOptions)
		current string
		want    string
	}{
		{
			name: "defaults: all TCP both ways",
			opts: func(*iptablesOptions) {},
			want: head + `-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A MESHD_INBOUND -p tcp -j MESHD_IN_REDIRECT
-A PREROUTING -p tcp -j MESHD_INBOUND
-A MESHD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MESHD_OUTBOUND -m owner --uid-owner 1337 -j RETURN
-A MESHD_OUTBOUND -o lo -j RETURN
-A MESHD_OUTBOUND -p tcp -j MESHD_OUT_REDIRECT
-A OUTPUT -p tcp -j MESHD_OUTBOUND
COMMIT
`,
		},
		{
			name: "exclusions, GID, included ports, ranges",
			opts: func(o *iptablesOptions) {
				o.InboundPort, o.OutboundPort, o.ProxyUID, o.ProxyGID = 7006, 7001, 2102, 2102
				o.ExcludeInboundPorts = []string{"15000", "15020"}
				o.InboundPorts = []string{"8080"}
				o.ExcludeOutboundPorts = []string{"5432", "8000-8100"}
				o.ExcludeOutboundCIDRs = []string{"169.254.169.254", "10.96.0.0/12"}
				o.OutboundPorts = []string{"9000:9010"}
			},
			want: head + `-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 7006
-A MESHD_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A MESHD_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A MESHD_INBOUND -p tcp -m tcp --dport 8080 -j MESHD_IN_REDIRECT
-A PREROUTING -p tcp -j MESHD_INBOUND
-A MESHD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 7001
-A MESHD_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESHD_OUTBOUND -m owner --gid-owner 2102 -j RETURN
-A MESHD_OUTBOUND -o lo -j RETURN
-A MESHD_OUTBOUND -d 169.254.169.254/32 -j RETURN
-A MESHD_OUTBOUND -d 10.96.0.0/12 -j RETURN
-A MESHD_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN
-A MESHD_OUTBOUND -p tcp -m tcp --dport 8000:8100 -j RETURN
-A MESHD_OUTBOUND -p tcp -m tcp --dport 9000:9010 -j MESHD_OUT_REDIRECT
-A OUTPUT -p tcp -j MESHD_OUTBOUND
COMMIT
`,
		},
		{
			name: "reapply deletes the old jumps first, leaves others alone",
			opts: func(*iptablesOptions) {},
			current: `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MESHD_INBOUND - [0:0]
:MESHD_OUTBOUND - [0:0]
-A PREROUTING -p tcp -j MESHD_INBOUND
-A PREROUTING -p tcp -m tcp --dport 80 -j OTHER
-A OUTPUT -p tcp -j MESHD_OUTBOUND
-A MESHD_OUTBOUND -o lo -j RETURN
COMMIT
`,
			want: "*nat\n-D PREROUTING -p tcp -j MESHD_INBOUND\n-D OUTPUT -p tcp -j MESHD_OUTBOUND\n" + strings.TrimPrefix(head, "*nat\n") + `-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A MESHD_INBOUND -p tcp -j MESHD_IN_REDIRECT
-A PREROUTING -p tcp -j MESHD_INBOUND
-A MESHD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MESHD_OUTBOUND -m owner --uid-owner 1337 -j RETURN
-A MESHD_OUTBOUND -o lo -j RETURN
-A MESHD_OUTBOUND -p tcp -j MESHD_OUT_REDIRECT
-A OUTPUT -p tcp -j MESHD_OUTBOUND
COMMIT
`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := base
			tc.opts(&o)
			if err := o.validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
			if got := o.rules(tc.current); got != tc.want {
				t.Errorf("rules:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestIptablesCleanupRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, current, want string
	}{
		{"nothing installed", "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j OTHER\nCOMMIT\n", ""},
		{"installed", `*nat
:PREROUTING ACCEPT [0:0]
:MESHD_IN_REDIRECT - [0:0]
:MESHD_INBOUND - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j MESHD_INBOUND
-A PREROUTING -j OTHER
-A MESHD_INBOUND -p tcp -j MESHD_IN_REDIRECT
COMMIT
`, "*nat\n-D PREROUTING -p tcp -j MESHD_INBOUND\n:MESHD_INBOUND - [0:0]\n:MESHD_IN_REDIRECT - [0:0]\n-X MESHD_INBOUND\n-X MESHD_IN_REDIRECT\nCOMMIT\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := cleanupRules(tc.current); got != tc.want {
				t.Errorf("cleanupRules:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestIptablesValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts func(o *iptablesOptions)
		want string // substring of the error
	}{
		{"inbound port range", func(o *iptablesOptions) { o.InboundPort = 0 }, "-inbound-port 0"},
		{"outbound port range", func(o *iptablesOptions) { o.OutboundPort = 70000 }, "-outbound-port 70000"},
		{"same ports", func(o *iptablesOptions) { o.OutboundPort = o.InboundPort }, "both 15006"},
		{"uid", func(o *iptablesOptions) { o.ProxyUID = -1 }, "-proxy-uid"},
		{"bad port", func(o *iptablesOptions) { o.ExcludeInboundPorts = []string{"http"} }, `bad port "http"`},
		{"reversed range", func(o *iptablesOptions) { o.ExcludeOutboundPorts = []string{"9000-8000"} }, "bad port range"},
		{"ipv6 cidr", func(o *iptablesOptions) { o.ExcludeOutboundCIDRs = []string{"fd00::/8"} }, "bad IPv4 CIDR"},
		{"bad cidr", func(o *iptablesOptions) { o.ExcludeOutboundCIDRs = []string{"10.0.0.0/33"} }, "bad IPv4 CIDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := iptablesOptions{InboundPort: 15006, OutboundPort: 15001, ProxyUID: 1337, ProxyGID: -1}
			tc.opts(&o)
			err := o.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestIptablesCommandLine(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	code := run([]string{"iptables", "-dry-run", "-proxy-uid", "999", "-exclude-inbound-ports", "15000"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"--uid-owner 999 -j RETURN", "--dport 15000 -j RETURN", "COMMIT"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dry run lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"iptables", "-dry-run", "-exclude-outbound-ports", "x"}, &out, &errb); code != 2 {
		t.Errorf("bad port: exit %d, want 2 (usage)", code)
	}
}

// TestIptablesNetns applies the rules for real with iptables-restore in a
// network namespace the test creates, twice (idempotent), then cleans up.
func TestIptablesNetns(t *testing.T) {
	ns := newNetns(t)
	r := iptablesRunner{save: "iptables-save", restore: "iptables-restore", prefix: []string{"ip", "netns", "exec", ns}}
	o := iptablesOptions{InboundPort: 15006, OutboundPort: 15001, ProxyUID: 1337, ProxyGID: -1, ExcludeInboundPorts: []string{"15000"}}
	for i := range 2 {
		if err := r.apply(o); err != nil {
			t.Fatalf("apply #%d: %v", i+1, err)
		}
	}
	cur, err := r.current()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-A PREROUTING -p tcp -j MESHD_INBOUND", "-A OUTPUT -p tcp -j MESHD_OUTBOUND"} {
		if n := strings.Count(cur, want+"\n"); n != 1 {
			t.Errorf("%q appears %d times after applying twice, want 1:\n%s", want, n, cur)
		}
	}
	if !strings.Contains(cur, "--uid-owner 1337 -j RETURN") || !strings.Contains(cur, "REDIRECT --to-ports 15006") {
		t.Errorf("rules missing:\n%s", cur)
	}
	for i := range 2 {
		if err := r.cleanup(); err != nil {
			t.Fatalf("cleanup #%d: %v", i+1, err)
		}
	}
	if cur, _ = r.current(); strings.Contains(cur, "MESHD_") {
		t.Errorf("left after cleanup:\n%s", cur)
	}
}

// newNetns creates an empty network namespace, deleted at cleanup. It skips
// the test, saying why, only where namespaces cannot be created.
func newNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	for _, bin := range []string{"ip", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (apt-get install iproute2 iptables; scripts/install-netns-tools.sh does it): %v", bin, err)
		}
	}
	name := fmt.Sprintf("meshd-ipt-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}
