package store

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// goRedisLogger routes go-redis's internal messages ("failed to dial after
// N attempts") into zap at debug level. Our own warn/info lines already say
// when Redis goes away and comes back; at warn level these would repeat it
// once per failed dial.
type goRedisLogger struct{ log *zap.Logger }

func (l goRedisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

var installLoggerOnce sync.Once

// InstallGoRedisLogger points go-redis's process-wide logger at log. go-redis
// has only a global logger, so this is done once per process; later calls
// are ignored.
func InstallGoRedisLogger(log *zap.Logger) {
	installLoggerOnce.Do(func() {
		redis.SetLogger(goRedisLogger{log: log.Named("go-redis")})
	})
}
