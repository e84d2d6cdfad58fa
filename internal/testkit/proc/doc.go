// Package proc reads what Linux's /proc says about a process: the CPU time
// it used, its resident and peak memory, its children, this process's open
// files. Tests and the load harness (cmd/meshbench) measure meshd with it;
// it is no test helper itself (it imports no testing), so a harness binary
// may use it too.
//
// Elsewhere than on Linux every read fails.
package proc
