package cachehandler

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// Stale-while-revalidate (RFC 5861 §3): within the window after expiry a
// client gets the stored answer at once while one background refresh per
// key runs — one per key across the fleet while Redis is up (a SET NX
// claim), one per key per edge while it is down.

// refreshBound bounds a background refresh (and its fleet-wide claim).
const refreshBound = 30 * time.Second

// claimRefresh reports whether this edge may run the refresh of key now.
// release must be called when the refresh is over.
func (c *Cache) claimRefresh(ctx context.Context, key string) (release func(), ok bool) {
	fl, leader := c.flights.join(refreshPrefix+key, nil)
	if !leader {
		fl.waiters.Add(-1)
		return nil, false
	}
	local := func() { c.flights.finish(refreshPrefix+key, fl) }
	if c.l2 == nil || !c.cfg.Redis.Available() {
		return local, true
	}
	claim := c.cfg.Redis.Keys().RefreshClaim(key)
	won, err := c.cfg.Redis.Client().SetNX(ctx, claim, c.origin, refreshBound).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		// Redis failed mid-claim: refresh locally rather than not at all.
		return local, true
	}
	if !won {
		local()
		return nil, false
	}
	return func() {
		// Our own claim only (a slow refresh's claim may have expired and
		// been taken by another edge), and not at once: it lingers a second
		// so the other edges drop their stale L1 copies on the bus message
		// before any of them could claim a second refresh.
		_ = releaseClaim.Run(context.WithoutCancel(ctx), c.cfg.Redis.Client(), []string{claim}, c.origin).Err()
		local()
	}, true
}

const refreshPrefix = store.RefreshClaimPrefix

var releaseClaim = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], 1000) end return 0`)

// serveWhileRevalidating answers with the expired (or soft-purged) entry
// at once when the rule's stale-while-revalidate window (or the soft
// purge's) allows, and starts one background
// fill for the key (the fill stores under the usual race checks; the
// other edges then drop their L1 copies so none of them refreshes again).
func (c *Cache) serveWhileRevalidating(w http.ResponseWriter, r *http.Request, next Next, rule *Rule, ps params,
	key string, stale *prepared, now time.Time) (bool, error) {
	until, reason, ok := c.staleWindow(rule, stale) // the rule's window, or a soft purge's (softpurge.go)
	if !ok || !now.Before(until) {
		return false, nil
	}
	ps = append(params(nil), ps...) // the caller's are on its stack
	refreshing := c.refreshInBackground(r, key, func(w http.ResponseWriter, r2 *http.Request) error {
		err := c.fill(w, r2, next, rule, ps, key, stale, false)
		c.publish(r2.Context(), busMessage{Keys: []string{key}})
		return err
	})
	status := c.cfg.StatusName + "; fwd=stale; detail=" + reason
	if !refreshing {
		status += "-refresh-running"
	}
	err := c.writeHit(w, r, stale, status, now)
	if errors.Is(err, errUnservable) {
		return false, nil
	}
	c.obs.Lookup(rule.Name, LookupStale)
	c.observeStale(rule.Name, reason)
	return true, err
}

// refreshInBackground runs fetch with a request detached from the client
// (its values, not its cancellation), into a writer nobody reads.
func (c *Cache) refreshInBackground(r *http.Request, key string, fetch func(w http.ResponseWriter, r *http.Request) error) bool {
	release, ok := c.claimRefresh(r.Context(), key)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), refreshBound)
	r2 := r.Clone(ctx)
	r2.Method = http.MethodGet
	r2.Header.Del("If-None-Match")
	r2.Header.Del("If-Modified-Since")
	r2.Header.Del("Range")
	go func() {
		defer cancel()
		defer release()
		defer func() {
			if v := recover(); v != nil {
				c.log.Error("background refresh panicked", zap.Any("panic", v))
			}
		}()
		if err := fetch(&refreshSink{h: http.Header{}}, r2); err != nil {
			c.log.Info("background refresh failed; the stale entry stays until its window ends", zap.Error(err))
		}
	}()
	return true
}

// refreshSink is the client of a background refresh.
type refreshSink struct{ h http.Header }

func (d *refreshSink) Header() http.Header         { return d.h }
func (d *refreshSink) Write(b []byte) (int, error) { return len(b), nil }
func (d *refreshSink) WriteHeader(int)             {}
