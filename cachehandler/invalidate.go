package cachehandler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Bounds on what an upstream header may ask for.
const (
	maxHeaderTags  = 32
	maxInvalidTags = 64
)

// handleMutation passes a POST/PUT/PATCH/DELETE on and drops the matching
// tags whenever the origin may have committed the change: on every outcome
// except a definite 4xx rejection (2xx, 3xx, 5xx, an upstream timeout or
// reset, the client gone). For an answer, the tags are dropped before the
// response reaches the client, so the client reads its own write.
//
// A client that hangs up does not cancel the upstream request: the origin
// keeps working on it anyway (Express does not abort a handler when its
// client leaves), so the edge waits for the origin's answer (at most
// mutationDetachBound after the client left) and invalidates when it comes.
// Invalidating at the hang-up instead would let a read that runs before
// the origin commits store the old version again.
func (c *Cache) handleMutation(w http.ResponseWriter, r *http.Request, next Next) error {
	var tags, soft []string
	var pbuf [4]param
	for _, ir := range c.cfg.Invalidations {
		if !slices.Contains(ir.Methods, r.Method) {
			continue
		}
		if ps, ok := ir.path.match(r.URL.EscapedPath(), pbuf[:0]); ok {
			if ir.Soft {
				soft = append(soft, renderTags(ir.tags, ps, r, c.cfg.Resolve)...)
			} else {
				tags = append(tags, renderTags(ir.tags, ps, r, c.cfg.Resolve)...)
			}
		}
	}
	if len(tags) == 0 && len(soft) == 0 && c.cfg.InvalidateHeader == "" {
		return next.ServeHTTP(w, r)
	}
	ctx, stop := detachContext(r.Context(), mutationDetachBound)
	defer stop()
	mw := &mutationWriter{ResponseWriter: w, c: c, ctx: ctx, tags: tags, soft: soft}
	err := next.ServeHTTP(mw, r.WithContext(ctx))
	if !mw.done {
		// No answer went through us: nothing was written (net/http sends
		// 200), or the upstream failed, timed out or was reset, or the
		// client left. Any of them may follow a commit.
		mw.commit(http.StatusOK)
	}
	return err
}

// mutationDetachBound is how long a mutation's upstream request may run on
// after its client has gone, waiting for the outcome that decides the
// invalidation (the origin's own timeouts usually end it sooner).
const mutationDetachBound = 30 * time.Second

// detachContext returns a context with parent's values that is not
// cancelled when parent is (the client leaving), only bound after that.
// stop releases it.
func detachContext(parent context.Context, bound time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	var timer *time.Timer
	var mu sync.Mutex
	unhook := context.AfterFunc(parent, func() {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() == nil {
			timer = time.AfterFunc(bound, cancel)
		}
	})
	return ctx, func() {
		unhook()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

type mutationWriter struct {
	http.ResponseWriter
	c    *Cache
	ctx  context.Context // survives the client
	tags []string
	soft []string // from invalidate lines marked soft
	done bool
}

func (mw *mutationWriter) Unwrap() http.ResponseWriter { return mw.ResponseWriter }

// commit invalidates unless code is a definite rejection (4xx other than
// 499, Caddy's "client closed request", after which the origin may have
// committed).
func (mw *mutationWriter) commit(code int) {
	if mw.done || code < 200 {
		return
	}
	mw.done = true
	tags := append(mw.tags, mw.c.stripInvalidateHeader(mw.Header())...)
	if rejected := code >= 400 && code < 500 && code != 499; !rejected {
		if len(tags) > 0 {
			mw.c.Invalidate(mw.ctx, tags)
		}
		// A tag also dropped hard is never merely soft-purged.
		var soft []string
		for _, t := range mw.soft {
			if !slices.Contains(tags, t) {
				soft = append(soft, t)
			}
		}
		if len(soft) > 0 {
			mw.c.softInvalidate(mw.ctx, soft, "invalidate")
		}
	}
}

func (mw *mutationWriter) WriteHeader(code int) {
	mw.commit(code)
	mw.ResponseWriter.WriteHeader(code)
}

func (mw *mutationWriter) Write(b []byte) (int, error) {
	mw.commit(http.StatusOK)
	return mw.ResponseWriter.Write(b)
}

// stripInvalidateHeader removes the upstream's tag header from h and
// returns its tags (bounded).
func (c *Cache) stripInvalidateHeader(h http.Header) []string {
	if c.cfg.InvalidateHeader == "" {
		return nil
	}
	name := http.CanonicalHeaderKey(c.cfg.InvalidateHeader)
	vals := h[name]
	if len(vals) == 0 {
		return nil
	}
	delete(h, name)
	var tags []string
	for _, v := range vals {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" && len(t) <= maxTagLen && len(tags) < maxHeaderTags {
				tags = append(tags, t)
			}
		}
	}
	return tags
}

// stripWriter wraps w so the upstream's tag header never reaches clients,
// also on paths that do not otherwise involve the cache.
func (c *Cache) stripWriter(w http.ResponseWriter) http.ResponseWriter {
	if c.cfg.InvalidateHeader == "" {
		return w
	}
	return &stripHeaderWriter{ResponseWriter: w, c: c}
}

// stripHeaderWriter strips the headers meant for this cache, once, as the
// answer's header is written: the rule mode's tag header, or with std the
// standards mode's (stdStripHeaders).
type stripHeaderWriter struct {
	http.ResponseWriter
	c    *Cache
	std  bool
	done bool
}

func (s *stripHeaderWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *stripHeaderWriter) WriteHeader(code int) {
	if !s.done && code >= 200 {
		s.done = true
		if s.std {
			s.c.stdStripHeaders(s.Header())
		} else {
			s.c.stripInvalidateHeader(s.Header())
		}
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *stripHeaderWriter) Write(b []byte) (int, error) {
	if !s.done {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

// Invalidate drops every entry carrying one of tags: in this process at
// once, in Redis, and in the other edges' L1 through the bus. It returns
// how many entries were dropped. With a fleet bus it returns only after
// every live edge has dropped its L1 copies and detached its fills for the
// tags, or after the bus's bound (see store.Bus). When Redis cannot be
// reached, the tags are remembered and invalidated there as soon as it is
// back, so an entry stored before the outage cannot outlive a change made
// during it.
func (c *Cache) Invalidate(ctx context.Context, tags []string) int {
	tags = dedupe(tags)
	if len(tags) > maxInvalidTags {
		tags = tags[:maxInvalidTags]
	}
	if len(tags) == 0 {
		return 0
	}
	// The same entry is usually in L1 and Redis: count it once.
	dropped := map[string]struct{}{}
	c.forget(tags, dropped)
	pendingInRedis := 0
	if c.l2 != nil {
		c.kickReplay()
		msg := busMessage{Tags: tags}
		// Tried even while this edge's breaker is open: other edges may
		// still reach Redis and would serve the old entry until the replay.
		inv, err := c.l2.invalidate(store.PastBreaker(ctx), tags, c.now())
		c.queueDrains(inv)
		if err != nil {
			c.pending.Add(tags...)
			level := zap.WarnLevel
			if !c.cfg.Redis.Available() {
				level = zap.DebugLevel // the outage itself is logged once by the store
			}
			c.log.Log(level, "invalidation could not reach redis; will retry when it is back",
				zap.Strings("tags", tagPatterns(tags)), zap.Error(err))
		} else {
			c.agesOfRedis(inv.keys, inv.expiries, dropped, c.now())
			for _, k := range inv.keys {
				dropped[k] = struct{}{}
			}
			// A large tag's keys are not listed (the drain unlinks them);
			// the other edges drop its entries by tag.
			msg.Keys = inv.keys
			pendingInRedis = inv.pending
			// Once more, now that the versions are bumped in Redis: a read
			// that began between the first drop and the bump saw the old
			// versions and may have put the old entry back into L1.
			c.forget(tags, dropped)
		}
		// Tried even when Redis failed us: the message may still reach the
		// other edges, and the bounded wait lets those that cannot hear it
		// notice before the client gets its answer.
		c.broadcast(ctx, msg)
	}
	n := len(dropped) + pendingInRedis
	c.obs.Invalidated(n)
	c.log.Debug("cache invalidated", zap.Strings("tags", tagPatterns(tags)), zap.Int("entries", n))
	return n
}

// forget drops tags from this process: the clock is bumped first (fills
// and reads in flight then cannot add the old answer to L1), then fills in
// flight are detached (later requests do not wait for them), then L1
// copies go.
func (c *Cache) forget(tags []string, dropped map[string]struct{}) {
	c.clock.bump(tags)
	c.flights.detach(tags)
	now := c.now()
	for _, t := range tags {
		entries := c.l1.dropTagEntries(t)
		c.agesOfL1(entries, now)
		for _, p := range entries {
			if dropped != nil {
				dropped[p.key] = struct{}{}
			}
		}
	}
}

func tagPatterns(tags []string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = store.KeyPattern(t)
	}
	return out
}

func dedupe(list []string) []string {
	out := list[:0:0]
	for _, s := range list {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// kickReplay starts the background replay of invalidations queued while
// Redis was unreachable, once it is back, and the drain of large tag sets
// left by an earlier run; on the request path it costs two atomic loads.
func (c *Cache) kickReplay() {
	if c.pending != nil {
		c.pending.Kick(c.replayPending)
	}
	c.kickDrain()
}

const replayBatch = 200

// replayPending is the queue's Replayer: queued tags are invalidated in
// batches; an overflowed queue (too much changed to track tag by tag)
// purges the whole cache namespace instead.
func (c *Cache) replayPending(ctx context.Context, tags []string, overflowed bool) (done []string, overflowHandled bool) {
	if c.testHookBeforeReplay != nil {
		c.testHookBeforeReplay()
	}
	if overflowed {
		// Too much changed to track tag by tag: drop everything every cache
		// rule on this connection stored, by the rule tags (no SCAN; the
		// entries become unservable at once and are unlinked in the
		// background). Edges of one fleet run the same rules.
		all := c.ruleTags.all()
		for i := 0; i < len(all); i += replayBatch {
			batch := all[i:min(i+replayBatch, len(all))]
			inv, err := c.l2.invalidate(ctx, batch, c.now())
			c.queueDrains(inv)
			if err != nil {
				c.log.Warn("purging the cache after an outage failed; will retry", zap.Error(err))
				return nil, false
			}
			c.publish(ctx, busMessage{Tags: batch})
		}
		c.resync() // as after missed bus messages: nothing older may stay in L1
		c.log.Warn("purged every cache rule's entries after an outage with too many changes to track",
			zap.Int("rules", len(all)))
		return tags, true // the purge covered every queued tag too
	}
	for i := 0; i < len(tags); i += replayBatch {
		batch := tags[i:min(i+replayBatch, len(tags))]
		inv, err := c.l2.invalidate(ctx, batch, c.now())
		c.queueDrains(inv)
		if err != nil {
			c.log.Warn("replaying invalidations failed; will retry", zap.Int("tags", len(tags)-i), zap.Error(err))
			return done, true
		}
		c.publish(ctx, busMessage{Tags: batch, Keys: inv.keys})
		// This edge skips its own bus messages: drop what it may have put
		// into L1 since the write (and stop reads in flight adding more).
		c.forget(batch, nil)
		done = append(done, batch...)
	}
	if len(done) > 0 {
		c.log.Info("replayed invalidations queued while redis was down", zap.Int("tags", len(done)))
	}
	return done, true
}

// busMessage tells other edges what to drop from their L1.
type busMessage struct {
	Origin  string   `json:"o,omitempty"`
	Tags    []string `json:"t,omitempty"`
	Keys    []string `json:"k,omitempty"`
	Pattern string   `json:"p,omitempty"`
	// Soft, when set, is a soft purge's time (unix ms): the tags, keys or
	// pattern are marked stale instead of dropped (softpurge.go).
	Soft int64 `json:"s,omitempty"`
}

// newOrigin names one Cache on the bus, so it can skip its own messages
// while another Cache in the same process still receives them.
func newOrigin() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// broadcast sends m to every edge and waits for their acknowledgements
// (bounded by the bus), reporting how it went.
func (c *Cache) broadcast(ctx context.Context, m busMessage) {
	msg, ok := c.busPayload(m)
	if !ok {
		return
	}
	res := c.cfg.Bus.Broadcast(ctx, msg)
	result := "acked"
	switch {
	case res.Err != nil:
		result = "unreachable"
		c.log.Debug("could not broadcast cache invalidation; waited for other edges to stop trusting their copies", zap.Error(res.Err))
	case res.Expected == 0:
		result = "alone"
	case res.Acked < res.Expected:
		result = "timeout"
		// A hung or departed edge makes every write time out until it leaves
		// the member set (≤ 1 s): one line per 10 s, with the count.
		if now := time.Now().UnixNano(); now-c.ackWarnedAt.Load() >= int64(10*time.Second) {
			c.ackWarnedAt.Store(now)
			c.log.Warn("cache invalidation not acknowledged by every edge in time; the write waited the bound",
				zap.Int("edges", res.Expected), zap.Int("acked", res.Acked), zap.Duration("waited", res.Waited),
				zap.Int64("timeouts_since_last_line", c.ackTimeouts.Swap(0)+1))
		} else {
			c.ackTimeouts.Add(1)
		}
	}
	c.obs.Acknowledged(result, res.Waited)
}

// busPayload is m as sent on the bus, stamped with this Cache's origin;
// false when there is no bus (or m does not encode).
func (c *Cache) busPayload(m busMessage) (string, bool) {
	if c.cfg.Bus == nil {
		return "", false
	}
	m.Origin = c.origin
	b, err := json.Marshal(m)
	if err != nil {
		return "", false
	}
	return string(b), true
}

func (c *Cache) publish(ctx context.Context, m busMessage) {
	msg, ok := c.busPayload(m)
	if !ok {
		return
	}
	if err := c.cfg.Bus.Publish(ctx, msg); err != nil {
		c.log.Debug("could not publish cache invalidation; other edges rely on their L1 TTL", zap.Error(err))
	}
}

func (c *Cache) onBusMessage(msg string) {
	var m busMessage
	if err := json.Unmarshal([]byte(msg), &m); err != nil || m.Origin == c.origin {
		return
	}
	if m.Soft != 0 {
		c.onSoftMessage(m)
		return
	}
	if len(m.Tags) > 0 {
		c.clock.bump(m.Tags)
		c.flights.detach(m.Tags)
		for _, t := range m.Tags {
			c.l1.dropTag(t)
		}
	}
	for _, k := range m.Keys {
		c.l1.remove(k)
	}
	if m.Pattern != "" {
		c.l1.dropMatching(m.Pattern)
	}
}

// PurgeKey drops one entry by its cache key (e.g. "event:42"). Only keys
// a rule could have written: never a session or limiter key. When keys
// carry the request's host, a key given without one ("event:42") drops
// every host's copy (event:42#…), with an admin-only SCAN.
func (c *Cache) PurgeKey(ctx context.Context, key string) error {
	if key == "" || len(key) > maxKeyLen {
		return errors.New("key must be 1 to 512 bytes")
	}
	if !c.isCacheKey(key) {
		return errors.New("not a key any cache rule writes")
	}
	if err := c.purgeVariants(ctx, key); err != nil { // variants.go
		return err
	}
	c.l1.remove(key)
	if c.l2 != nil {
		if err := c.l2.del(ctx, key); err != nil {
			return err
		}
		c.l1.remove(key) // a read that overlapped the delete may have put it back
		c.broadcast(ctx, busMessage{Keys: []string{key}})
	}
	if !c.cfg.FixedUpstreamHost && strings.IndexByte(key, hostSeparator) < 0 {
		_, err := c.purgeGlob(ctx, escapeGlob(key)+string(hostSeparator)+"*")
		return err
	}
	return nil
}

// escapeGlob makes s match itself in a glob.
func escapeGlob(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '*' || c == '?' || c == '[' || c == ']' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// PurgePattern drops entries whose key matches glob (Redis glob syntax,
// e.g. "events:*"). Only keys that a rule could have written are deleted,
// so "*" can never reach sessions or limiter state sharing the prefix.
func (c *Cache) PurgePattern(ctx context.Context, glob string) (int, error) {
	if glob == "" || len(glob) > 256 {
		return 0, errors.New("pattern must be 1 to 256 bytes")
	}
	if _, err := path.Match(glob, ""); err != nil {
		return 0, errors.New("pattern is not a valid glob")
	}
	return c.purgeGlob(ctx, glob)
}

// purgeGlob is PurgePattern without the bound on an admin's pattern: the
// engine's own patterns are a key (up to maxKeyLen) escaped plus a suffix.
func (c *Cache) purgeGlob(ctx context.Context, glob string) (int, error) {
	n := c.l1.dropMatching(glob)
	if c.l2 == nil {
		return n, nil
	}
	m, err := c.l2.purgePattern(ctx, glob, c.isCacheKey)
	if err != nil {
		return n, err
	}
	c.l1.dropMatching(glob) // reads that overlapped the purge may have put some back
	c.broadcast(ctx, busMessage{Pattern: glob})
	return n + m, nil
}

// isCacheKey reports whether key has the shape of some rule's key (with
// the host part, when keys carry the host).
func (c *Cache) isCacheKey(key string) bool {
	key = variantBase(key)
	if c.cfg.Standard != nil && strings.HasPrefix(key, stdKeyPrefix) {
		return true
	}
	return c.ruleForKey(key) != nil
}
