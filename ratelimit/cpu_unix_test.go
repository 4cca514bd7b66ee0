//go:build unix

package ratelimit

import "syscall"

// selfCPU is this process's CPU time in µs: the Go side of a decision
// (Allow, go-redis, the network) plus a little benchmark harness.
func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}
