package e2e

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// TestMain builds ticketi-edge and ticketi-sim once for the whole package
// (minutes on a cold build cache, seconds afterwards). In -short mode
// nothing is built and every test skips.
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "ticketi-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	if _, err := Build(dir, logf); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
