package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// errUsage marks command-line mistakes (exit code 2).
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "validate":
		err = cmdValidate(args[1:], stdout)
	case "version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "route":
		if len(args) < 2 || args[1] != "explain" {
			usage(stderr)
			return 2
		}
		err = cmdExplain(args[2:], stdout)
	case "iptables":
		err = cmdIptables(args[1:], stdout, stderr)
	case "tap":
		ctx, stop := signalContext()
		err = cmdTap(ctx, args[1:], stdout, stderr)
		stop()
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "meshd: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintln(stderr, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  meshd run -config FILE [-log-level info] [-log-format json|text] [-watch-interval 1s] [-reuse-port=false]
  meshd validate -config FILE
  meshd version
  meshd route explain -config FILE /pkg.Service/Method [-H key=value ...] [-admin ADDR]
  meshd tap -admin ADDR [-route R] [-method M] [-code C] [-limit N] [-rate N]
  meshd iptables [-inbound-port 15006] [-outbound-port 15001] [-proxy-uid 1337] [-exclude-inbound-ports P,...]
                 [-exclude-outbound-ports P,...] [-exclude-outbound-cidrs CIDR,...] [-dry-run] [-cleanup]
`)
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		return fmt.Sprintf("meshd %s (%s)", v, bi.GoVersion)
	}
	return "meshd " + v
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("meshd: bad -log-level %q: %w", s, errUsage)
	}
	return l, nil
}

// signalContext is cancelled on SIGTERM or SIGINT.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
