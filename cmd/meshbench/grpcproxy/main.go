// Command grpcproxy is the load harness's grpc-proxy target: a process that
// serves github.com/mwitkow/grpc-proxy's proxy.TransparentHandler (wired in
// internal/grpcproxy, as the library's README shows) on -listen, in front
// of one backend, -backend, over h2c. meshbench builds and runs it so its
// CPU and memory are charged to a process of its own, as meshd's are. It
// stops on SIGTERM or SIGINT (graceful for up to 2 s, then hard).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/internal/grpcproxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("grpcproxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on (h2c)")
	backend := fs.String("backend", "", "the backend's host:port (h2c)")
	version := fs.Bool("version", false, "print the versions of grpc-proxy and grpc-go it was built with, and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		fmt.Printf("mwitkow/grpc-proxy %s (proxy.TransparentHandler, grpc-go %s)\n",
			depVersion("github.com/mwitkow/grpc-proxy"), depVersion("google.golang.org/grpc"))
		return nil
	}
	if *backend == "" {
		return fmt.Errorf("grpcproxy: -backend is required")
	}
	cc, err := grpc.NewClient("passthrough:///"+*backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("grpcproxy: dial %s: %w", *backend, err)
	}
	defer cc.Close()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("grpcproxy: %w", err)
	}
	srv := grpcproxy.NewServer(cc)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("grpcproxy: serve: %w", err)
	case <-ctx.Done():
	}
	graceful := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(graceful)
	}()
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-graceful:
	case <-t.C:
		srv.Stop()
		<-graceful
	}
	return nil
}

// depVersion is the version of module path this binary was built with.
func depVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "(version unknown)"
}
