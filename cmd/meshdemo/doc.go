// Command meshdemo is meshd's demo (`make demo`): it starts a real Consul
// agent, three real gRPC backends registered in it, and the meshd binary
// routing through Consul discovery; sends traffic through meshd, printing
// which backend answered each call; flips one backend's health to show
// ejection and re-admission; registers a fourth backend to show discovery;
// then prints a summary and exits. With -keep everything stays up until
// Ctrl-C.
package main
