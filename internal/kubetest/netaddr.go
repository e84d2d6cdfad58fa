package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// seq numbers the dummy interfaces of one test binary.
var seq atomic.Int32

// BackendIPs returns n addresses, on a dummy interface created for tb and
// deleted at its cleanup (or on lo, removed at cleanup, where the kernel
// has no dummy interfaces), that backends can listen on and EndpointSlices
// can name (the API server refuses loopback addresses in EndpointSlices).
// They are in 198.18.0.0/15 (the benchmarking range, never routed), the
// third octet drawn from the process id so that test binaries running at
// once do not collide. It needs root and ip(8): without them the test is
// skipped, or fails if CI=true.
func BackendIPs(tb testing.TB, n int) []string {
	tb.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(tb, "kubetest: backends on a dummy interface need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(tb, "kubetest: no ip(8): run `make netns-tools`")
	}
	k := seq.Add(1)
	link := fmt.Sprintf("mkt%d-%d", os.Getpid()%100000, k)
	octet := (os.Getpid()*7+int(k))%250 + 2
	// Kernels without the dummy module (some containers) get the
	// addresses on lo instead: still local, still not loopback addresses.
	dev := link
	if err := exec.Command("ip", "link", "add", link, "type", "dummy").Run(); err != nil {
		dev = "lo"
	} else {
		tb.Cleanup(func() { _ = exec.Command("ip", "link", "del", link).Run() })
	}
	ips := make([]string, n)
	for i := range ips {
		ips[i] = fmt.Sprintf("198.18.%d.%d", octet, i+1)
		if out, err := exec.Command("ip", "addr", "add", ips[i]+"/32", "dev", dev).CombinedOutput(); err != nil {
			tb.Fatalf("ip addr add %s dev %s: %v: %s", ips[i], dev, err, strings.TrimSpace(string(out)))
		}
		if dev == "lo" {
			ip := ips[i]
			tb.Cleanup(func() { _ = exec.Command("ip", "addr", "del", ip+"/32", "dev", "lo").Run() })
		}
	}
	if out, err := exec.Command("ip", "link", "set", dev, "up").CombinedOutput(); err != nil {
		tb.Fatalf("ip link set %s up: %v: %s", dev, err, out)
	}
	return ips
}

func skipOrFail(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}
