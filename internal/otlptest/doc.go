// Package otlptest runs a real OTLP/gRPC trace collector in-process for tests.
//
// A Receiver listens on 127.0.0.1 with an ephemeral port and implements the
// collector's TraceService, so exporters under test speak the real protocol
// over a real socket instead of being swapped for a fake. It keeps every span
// it receives, in arrival order, and lets a test wait for a number of them
// with a deadline rather than sleeping.
//
// Stop closes the listener and all connections, which is how tests simulate a
// collector that went down: exports then fail with Unavailable.
package otlptest
