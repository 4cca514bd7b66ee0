package store

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Bus is a Redis pub/sub channel that edge instances use to tell each
// other to drop local copies (cache L1 entries, cached sessions).
// Delivery is best effort: while Redis is down nothing arrives, which is
// why every local copy also has a short TTL.
type Bus struct {
	rdb     *Redis
	channel string
	log     *zap.Logger

	mu       sync.Mutex
	handlers map[int]func(string)
	nextID   int
	cancel   context.CancelFunc
	done     chan struct{}
}

// maxBusMessage bounds what a subscriber accepts: a message is a list of
// keys or tags, never a body.
const maxBusMessage = 64 << 10

// NewBus subscribes to channel (prefixed) and starts delivering. go-redis
// re-subscribes by itself after a reconnect.
func NewBus(r *Redis, channel string, log *zap.Logger) *Bus {
	if log == nil {
		log = zap.NewNop()
	}
	b := &Bus{rdb: r, channel: r.Key(channel), log: log, handlers: map[int]func(string){}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	ps := r.Client().Subscribe(context.WithValue(ctx, probeKey{}, true), b.channel)
	go b.receive(ctx, ps)
	return b
}

func (b *Bus) receive(ctx context.Context, ps *redis.PubSub) {
	defer close(b.done)
	defer ps.Close()
	ch := ps.Channel(redis.WithChannelSize(1024))
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			if len(m.Payload) > maxBusMessage {
				b.log.Warn("dropping oversized bus message", zap.String("channel", b.channel), zap.Int("bytes", len(m.Payload)))
				continue
			}
			b.mu.Lock()
			hs := make([]func(string), 0, len(b.handlers))
			for _, h := range b.handlers {
				hs = append(hs, h)
			}
			b.mu.Unlock()
			for _, h := range hs {
				h(m.Payload)
			}
		}
	}
}

// Publish sends msg to every instance, this one included.
func (b *Bus) Publish(ctx context.Context, msg string) error {
	return b.rdb.Client().Publish(ctx, b.channel, msg).Err()
}

// Subscribe registers fn for every message; the returned func removes it.
func (b *Bus) Subscribe(fn func(msg string)) (unsubscribe func()) {
	b.mu.Lock()
	id := b.nextID
	b.nextID++
	b.handlers[id] = fn
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.handlers, id)
		b.mu.Unlock()
	}
}

// Close stops receiving.
func (b *Bus) Close() {
	b.cancel()
	<-b.done
}
