//go:build race

package store_test

// raceEnabled: the race detector makes every call several times dearer in
// CPU, so a burst of goroutines queues for the 2 cores longer.
const raceEnabled = true
