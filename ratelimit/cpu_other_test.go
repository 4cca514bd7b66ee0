//go:build !unix

package ratelimit

// selfCPU is not measured on this platform; the metric reads 0.
func selfCPU() float64 { return 0 }
