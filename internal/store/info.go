package store

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServerInfo is the part of INFO the health endpoint shows.
type ServerInfo struct {
	Version         string
	UptimeSeconds   int64
	UsedMemory      string // INFO's human form, e.g. "1.02M"
	PeakMemory      string
	MaxmemoryPolicy string
}

// infoCache keeps INFO for a short while so that a load balancer probing
// every edge every second cannot turn health checks into Redis load.
type infoCache struct {
	ttl time.Duration

	mu      sync.Mutex
	at      time.Time
	value   ServerInfo
	lastErr error
}

// Info returns INFO server+memory, cached for about a second. Only one
// caller refreshes at a time; the others wait for that answer.
func (r *Redis) Info(ctx context.Context) (ServerInfo, error) {
	c := &r.info
	c.mu.Lock()
	defer c.mu.Unlock()
	now := r.now()
	if !c.at.IsZero() && now.Sub(c.at) < c.ttl {
		return c.value, c.lastErr
	}
	raw, err := r.client.Info(ctx, "server", "memory").Result()
	c.at = now
	c.lastErr = err
	if err == nil {
		c.value = ParseInfo(raw)
	}
	return c.value, err
}

// ParseInfo extracts the fields of ServerInfo from an INFO reply.
func ParseInfo(raw string) ServerInfo {
	var si ServerInfo
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		switch k {
		case "redis_version":
			si.Version = v
		case "uptime_in_seconds":
			si.UptimeSeconds, _ = strconv.ParseInt(v, 10, 64)
		case "used_memory_human":
			si.UsedMemory = v
		case "used_memory_peak_human":
			si.PeakMemory = v
		case "maxmemory_policy":
			si.MaxmemoryPolicy = v
		}
	}
	return si
}
