package main

import (
	"fmt"
	"os"
	"slices"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The harness starts its backend by re-executing its own binary with
	// -serve-backend; under `go test` that binary is this one, so serve
	// here (before the testing flags are parsed, which would reject it).
	if slices.Contains(os.Args[1:], "-serve-backend") {
		if err := serveBackend(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
