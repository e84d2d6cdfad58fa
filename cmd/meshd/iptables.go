package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

// The nat-table chains `meshd iptables` owns. Every rule it installs lives
// in them, except one jump each from PREROUTING and OUTPUT, so cleanup can
// find everything by name.
const (
	chainInbound     = "MESHD_INBOUND"
	chainInRedirect  = "MESHD_IN_REDIRECT"
	chainOutbound    = "MESHD_OUTBOUND"
	chainOutRedirect = "MESHD_OUT_REDIRECT"
)

var meshdChains = []string{chainInbound, chainInRedirect, chainOutbound, chainOutRedirect}

// iptablesOptions is what `meshd iptables` redirects.
type iptablesOptions struct {
	InboundPort          int      // meshd's inbound (original_dst inbound) listener port
	OutboundPort         int      // meshd's outbound (original_dst outbound) listener port
	ProxyUID             int      // meshd's UID: its own connections are never redirected
	ProxyGID             int      // optional, -1: also exempt this GID
	InboundPorts         []string // destination ports redirected inbound; nil: all TCP
	ExcludeInboundPorts  []string
	OutboundPorts        []string // destination ports redirected outbound; nil: all TCP
	ExcludeOutboundPorts []string
	ExcludeOutboundCIDRs []string
}

func cmdIptables(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("iptables", stderr)
	o := iptablesOptions{}
	fs.IntVar(&o.InboundPort, "inbound-port", 15006, "port of meshd's inbound listener (original_dst: {direction: inbound})")
	fs.IntVar(&o.OutboundPort, "outbound-port", 15001, "port of meshd's outbound listener (original_dst: {direction: outbound})")
	fs.IntVar(&o.ProxyUID, "proxy-uid", 1337, "UID meshd runs as; its own traffic is not redirected")
	fs.IntVar(&o.ProxyGID, "proxy-gid", -1, "GID whose traffic is not redirected either (-1: none)")
	inPorts := fs.String("inbound-ports", "*", `inbound destination ports to redirect, comma-separated ("*": all TCP)`)
	exIn := fs.String("exclude-inbound-ports", "", "inbound ports never redirected, e.g. meshd's admin port 15000")
	outPorts := fs.String("outbound-ports", "*", `outbound destination ports to redirect ("*": all TCP)`)
	exOut := fs.String("exclude-outbound-ports", "", "outbound destination ports never redirected")
	exCIDR := fs.String("exclude-outbound-cidrs", "", "outbound destination CIDRs never redirected, e.g. 169.254.169.254/32")
	dry := fs.Bool("dry-run", false, "print the iptables-restore input instead of applying it")
	cleanup := fs.Bool("cleanup", false, "remove every rule and chain meshd installed")
	bin := fs.String("iptables", "iptables", `iptables flavour: "iptables", "iptables-legacy" or "iptables-nft" (runs its -save and -restore)`)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("meshd iptables: unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	o.InboundPorts, o.ExcludeInboundPorts = splitList(*inPorts), splitList(*exIn)
	o.OutboundPorts, o.ExcludeOutboundPorts = splitList(*outPorts), splitList(*exOut)
	o.ExcludeOutboundCIDRs = splitList(*exCIDR)
	if len(o.InboundPorts) == 1 && o.InboundPorts[0] == "*" {
		o.InboundPorts = nil
	}
	if len(o.OutboundPorts) == 1 && o.OutboundPorts[0] == "*" {
		o.OutboundPorts = nil
	}
	ipt := iptablesRunner{save: *bin + "-save", restore: *bin + "-restore"}
	if *cleanup {
		if *dry {
			cur, err := ipt.current()
			if err != nil {
				return err
			}
			fmt.Fprint(stdout, cleanupRules(cur))
			return nil
		}
		return ipt.cleanup()
	}
	if err := o.validate(); err != nil {
		return fmt.Errorf("meshd iptables: %v: %w", err, errUsage)
	}
	if *dry {
		fmt.Fprint(stdout, o.rules(""))
		return nil
	}
	if err := ipt.apply(o); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "meshd iptables: inbound TCP redirected to :%d, outbound to :%d, UID %d exempt\n", o.InboundPort, o.OutboundPort, o.ProxyUID)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// validate reports the first problem with o.
func (o *iptablesOptions) validate() error {
	for _, p := range []struct {
		name string
		v    int
	}{{"-inbound-port", o.InboundPort}, {"-outbound-port", o.OutboundPort}} {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("%s %d: want 1..65535", p.name, p.v)
		}
	}
	if o.InboundPort == o.OutboundPort {
		return fmt.Errorf("-inbound-port and -outbound-port are both %d", o.InboundPort)
	}
	if o.ProxyUID < 0 {
		return fmt.Errorf("-proxy-uid %d: want a UID", o.ProxyUID)
	}
	for _, l := range []struct {
		name  string
		ports []string
	}{{"-inbound-ports", o.InboundPorts}, {"-exclude-inbound-ports", o.ExcludeInboundPorts}, {"-outbound-ports", o.OutboundPorts}, {"-exclude-outbound-ports", o.ExcludeOutboundPorts}} {
		for _, p := range l.ports {
			if _, err := portSpec(p); err != nil {
				return fmt.Errorf("%s: %v", l.name, err)
			}
		}
	}
	for _, c := range o.ExcludeOutboundCIDRs {
		if _, err := cidrSpec(c); err != nil {
			return fmt.Errorf("-exclude-outbound-cidrs: %v", err)
		}
	}
	return nil
}

// portSpec turns "80" or "8000-8100" into iptables' "80" / "8000:8100".
func portSpec(s string) (string, error) {
	lo, hi, isRange := strings.Cut(strings.ReplaceAll(s, ":", "-"), "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return "", fmt.Errorf("bad port %q", s)
	}
	if !isRange {
		return strconv.Itoa(a), nil
	}
	b, err := strconv.Atoi(hi)
	if err != nil || b < a || b > 65535 {
		return "", fmt.Errorf("bad port range %q", s)
	}
	return fmt.Sprintf("%d:%d", a, b), nil
}

// cidrSpec accepts an IPv4 address or prefix (iptables, not ip6tables).
func cidrSpec(s string) (string, error) {
	if !strings.Contains(s, "/") {
		s += "/32"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return "", fmt.Errorf("bad IPv4 CIDR %q", s)
	}
	return p.Masked().String(), nil
}

// rules is the iptables-restore --noflush input that installs the
// redirection. current is `iptables-save -t nat`: jumps to meshd's chains
// found there are deleted first, so applying twice (an init container that
// restarts) leaves exactly one set of rules. The whole input is one
// transaction: the pod never runs with half the rules.
func (o *iptablesOptions) rules(current string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	removeJumps(&b, current)
	for _, c := range meshdChains {
		// Declaring an existing chain under --noflush flushes it.
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	// Inbound: PREROUTING sees connections from outside the pod.
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainInRedirect, o.InboundPort)
	for _, p := range o.ExcludeInboundPorts {
		ps, _ := portSpec(p)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %s -j RETURN\n", chainInbound, ps)
	}
	if len(o.InboundPorts) == 0 {
		fmt.Fprintf(&b, "-A %s -p tcp -j %s\n", chainInbound, chainInRedirect)
	}
	for _, p := range o.InboundPorts {
		ps, _ := portSpec(p)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %s -j %s\n", chainInbound, ps, chainInRedirect)
	}
	fmt.Fprintf(&b, "-A PREROUTING -p tcp -j %s\n", chainInbound)

	// Outbound: OUTPUT sees connections the pod's processes open. meshd's
	// own (by UID) must pass, or every upstream call would loop back into
	// meshd; loopback traffic stays local (an app calling itself, meshd
	// reaching the app).
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainOutRedirect, o.OutboundPort)
	fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", chainOutbound, o.ProxyUID)
	if o.ProxyGID >= 0 {
		fmt.Fprintf(&b, "-A %s -m owner --gid-owner %d -j RETURN\n", chainOutbound, o.ProxyGID)
	}
	fmt.Fprintf(&b, "-A %s -o lo -j RETURN\n", chainOutbound)
	for _, c := range o.ExcludeOutboundCIDRs {
		cs, _ := cidrSpec(c)
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", chainOutbound, cs)
	}
	for _, p := range o.ExcludeOutboundPorts {
		ps, _ := portSpec(p)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %s -j RETURN\n", chainOutbound, ps)
	}
	if len(o.OutboundPorts) == 0 {
		fmt.Fprintf(&b, "-A %s -p tcp -j %s\n", chainOutbound, chainOutRedirect)
	}
	for _, p := range o.OutboundPorts {
		ps, _ := portSpec(p)
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %s -j %s\n", chainOutbound, ps, chainOutRedirect)
	}
	fmt.Fprintf(&b, "-A OUTPUT -p tcp -j %s\n", chainOutbound)
	b.WriteString("COMMIT\n")
	return b.String()
}

// cleanupRules is the iptables-restore --noflush input that removes
// everything meshd installed according to current (`iptables-save -t nat`):
// the jumps, then the chains, flushed and deleted. It is "" when there is
// nothing to remove.
func cleanupRules(current string) string {
	var b strings.Builder
	removeJumps(&b, current)
	present := existingChains(current)
	for _, c := range present {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range present {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	if b.Len() == 0 {
		return ""
	}
	return "*nat\n" + b.String() + "COMMIT\n"
}

// removeJumps writes a -D for every rule of a built-in chain that jumps to
// one of meshd's chains. iptables-save prints rules in the canonical form
// -D accepts.
func removeJumps(b *strings.Builder, current string) {
	sc := bufio.NewScanner(strings.NewReader(current))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "-A ")
		if !ok {
			continue
		}
		chain, _, _ := strings.Cut(rest, " ")
		if strings.HasPrefix(chain, "MESHD_") {
			continue // flushed with its chain
		}
		for _, c := range meshdChains {
			if strings.HasSuffix(rest, " -j "+c) || strings.Contains(rest, " -j "+c+" ") {
				b.WriteString("-D " + rest + "\n")
				break
			}
		}
	}
}

// existingChains lists meshd's chains declared in current, sorted.
func existingChains(current string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(current))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, ":MESHD_") {
			continue
		}
		name, _, _ := strings.Cut(line[1:], " ")
		for _, c := range meshdChains {
			if name == c {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// iptablesRunner runs one iptables flavour's -save and -restore. prefix,
// when set, is prepended to each command (tests run them inside a network
// namespace with "ip netns exec NAME").
type iptablesRunner struct {
	save, restore string
	prefix        []string
}

func (r iptablesRunner) command(name string, args ...string) *exec.Cmd {
	full := append(append(append([]string{}, r.prefix...), name), args...)
	return exec.Command(full[0], full[1:]...)
}

// current is the nat table as iptables-save prints it.
func (r iptablesRunner) current() (string, error) {
	cmd := r.command(r.save, "-t", "nat")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("meshd iptables: %s -t nat: %w: %s", r.save, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (r iptablesRunner) load(rules string) error {
	cmd := r.command(r.restore, "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(rules)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("meshd iptables: %s rejected the rules: %s\n%s", r.restore, strings.TrimSpace(errb.String()), rules)
		}
		return fmt.Errorf("meshd iptables: %s: %w", r.restore, err)
	}
	return nil
}

// apply installs o's rules, replacing any meshd installed before.
func (r iptablesRunner) apply(o iptablesOptions) error {
	cur, err := r.current()
	if err != nil {
		return err
	}
	return r.load(o.rules(cur))
}

// cleanup removes everything meshd installed; nothing installed is fine.
func (r iptablesRunner) cleanup() error {
	cur, err := r.current()
	if err != nil {
		return err
	}
	rules := cleanupRules(cur)
	if rules == "" {
		return nil
	}
	return r.load(rules)
}
