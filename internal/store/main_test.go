package store

import (
	"os"
	"testing"

	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	// Fault tests dial dead servers on purpose; keep go-redis quiet.
	InstallGoRedisLogger(zap.NewNop())
	os.Exit(m.Run())
}
