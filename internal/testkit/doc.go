// Package testkit is meshd's test scaffolding, written once: every test
// package uses it rather than keeping a copy of its own.
//
//   - [WaitFor] and [Poll] wait for a condition with a deadline, so that no
//     test sleeps to wait for state.
//   - Package proc (testkit/proc) reads /proc: CPU time, RSS, open files.
//
// testkit imports no meshd package, so any package's tests may use it.
package testkit
