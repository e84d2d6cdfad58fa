package consultest

import "syscall"

// sysProcAttr makes the kernel kill the agent if the test binary dies
// (panic, timeout, SIGKILL) before its cleanup runs: an orphaned agent would
// hold ports and CPU on a shared machine.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
