package e2e

import "syscall"

// sysProcAttr makes the kernel SIGKILL a child when the test binary dies,
// so a crashed or killed `go test` leaves no edge or sim holding ports.
// (The parent-death signal follows the OS thread that forked; Go only
// retires threads locked with runtime.LockOSThread, which we never do.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
