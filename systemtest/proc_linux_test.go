package systemtest

import "syscall"

// sysProcAttr makes the kernel kill a node when the test binary dies (a
// -timeout panic runs no t.Cleanup), so no cluster outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
