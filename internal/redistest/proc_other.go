//go:build !linux

package redistest

import (
	"syscall"
	"time"
)

// sysProcAttr has no parent-death signal outside Linux; t.Cleanup still
// kills the server.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// waitStopped cannot observe the process state portably; the signal is
// assumed to take effect at once.
func waitStopped(int, bool, time.Duration) error { return nil }

// listening cannot inspect sockets portably; the caller relies on the
// process id reported by INFO instead.
func listening(int, int) (bool, error) { return true, nil }
