package sessionauth

import (
	"context"
	"strings"
)

// Bus messages (Options.Bus). A storage id is not a secret (it is a Redis
// key name and cannot be turned into a token), so it may travel on the bus;
// tokens never do. Other users' messages on the same channel are ignored.
const (
	busPrefix      = "sessionauth:"
	busDestroy     = busPrefix + "d:" // + storage id: one session
	busDestroyUser = busPrefix + "u:" // + user id: every session of a user
	maxBusMsg      = 512
)

// onBus applies an invalidation from any instance, this one's own
// included (store.PubSub delivers to the publisher), where it repeats the
// drop the publisher made locally before publishing.
func (m *Manager) onBus(msg string) {
	if len(msg) > maxBusMsg || !strings.HasPrefix(msg, busPrefix) {
		return
	}
	switch {
	case strings.HasPrefix(msg, busDestroy):
		id := msg[len(busDestroy):]
		if validStorageID(id) {
			m.dropLocal(keyOfID(id))
			m.stats.busInvalidations.Add(1)
		}
	case strings.HasPrefix(msg, busDestroyUser):
		uid := msg[len(busDestroyUser):]
		if ValidUserID(uid) {
			m.dropUserLocal(uid)
			m.stats.busInvalidations.Add(1)
		}
	}
}

func (m *Manager) publish(ctx context.Context, msg string) {
	if m.bus == nil {
		return
	}
	if err := m.bus.Publish(context.WithoutCancel(ctx), msg); err != nil {
		m.log.Warn("session invalidation not published; other instances drop the session within local_ttl",
			errField(err))
	}
}
