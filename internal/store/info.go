package store

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServerInfo is the part of INFO the health endpoint and the operator
// views (/edge/stats, the dashboard) show.
type ServerInfo struct {
	Version         string `json:"version"`
	UptimeSeconds   int64  `json:"uptime_seconds"`
	UsedMemory      string `json:"used_memory_human"` // INFO's human form, e.g. "1.02M"
	PeakMemory      string `json:"used_memory_peak_human"`
	MaxmemoryPolicy string `json:"maxmemory_policy"`

	UsedMemoryBytes    int64   `json:"used_memory"`
	PeakMemoryBytes    int64   `json:"used_memory_peak"`
	MaxmemoryBytes     int64   `json:"maxmemory"`
	FragmentationRatio float64 `json:"mem_fragmentation_ratio"`
	EvictedKeys        int64   `json:"evicted_keys"`
	ExpiredKeys        int64   `json:"expired_keys"`
	// Keys is the key count summed over the keyspace section's databases.
	Keys int64 `json:"keys"`
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
	raw, err := r.client.Info(ctx, "server", "memory", "stats", "keyspace").Result()
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
		case "used_memory":
			si.UsedMemoryBytes, _ = strconv.ParseInt(v, 10, 64)
		case "used_memory_peak":
			si.PeakMemoryBytes, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory":
			si.MaxmemoryBytes, _ = strconv.ParseInt(v, 10, 64)
		case "mem_fragmentation_ratio":
			si.FragmentationRatio, _ = strconv.ParseFloat(v, 64)
		case "evicted_keys":
			si.EvictedKeys, _ = strconv.ParseInt(v, 10, 64)
		case "expired_keys":
			si.ExpiredKeys, _ = strconv.ParseInt(v, 10, 64)
		default:
			// Keyspace lines: db0:keys=12,expires=12,avg_ttl=0
			if strings.HasPrefix(k, "db") {
				for _, kv := range strings.Split(v, ",") {
					if n, ok := strings.CutPrefix(kv, "keys="); ok {
						keys, _ := strconv.ParseInt(n, 10, 64)
						si.Keys += keys
					}
				}
			}
		}
	}
	return si
}
