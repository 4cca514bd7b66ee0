package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ticketi/edge/cachehandler"
	"github.com/ticketi/edge/internal/store"
)

// cacheEntry is the seed's cache inspection (EXISTS, TTL, EXPIRE):
//
//	GET  /edge/cache/entry?key=event:42[&cache=name]
//	     → {"key", "caches": {name: {rule, l1, l2, redis, redis_error}}}
//	POST /edge/cache/entry {"key": "event:42", "ttl": "30s"[, "cache": name]}
//	     (or PATCH) → the same, after the entry's TTL was set
//
// Keys are cache keys as the rules render them, without the environment
// prefix. Only keys a rule could have written are read: never a session or
// a limiter key. A Redis that cannot be read is reported in the answer
// with what L1 holds (200, not 500).
func (a *adminAPI) cacheEntry(w http.ResponseWriter, r *http.Request, app *App, _ string) error {
	var req struct {
		Key   string `json:"key"`
		TTL   string `json:"ttl"`
		Cache string `json:"cache"`
	}
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		req.Key, req.Cache = q.Get("key"), q.Get("cache")
	} else if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Key == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`"key" is required, e.g. event:42`)}
	}
	caches, err := app.cachesNamed(req.Cache)
	if err != nil {
		return err
	}
	ctx := r.Context()
	out := map[string]cachehandler.EntryInfo{}
	if r.Method == http.MethodGet {
		for _, name := range sortedKeys(caches) {
			info, err := caches[name].engine.Inspect(ctx, req.Key)
			if errors.Is(err, cachehandler.ErrNotCacheKey) {
				continue // another handler's rules may write it
			}
			if err != nil {
				return entryError(err)
			}
			out[name] = info
		}
		if len(out) == 0 {
			return entryError(cachehandler.ErrNotCacheKey)
		}
		if !anyStored(out) {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("%v (neither L1 nor Redis holds the %s key)", cachehandler.ErrNotStored, store.KeyPattern(req.Key))}
		}
		return writeJSON(w, http.StatusOK, map[string]any{"key": req.Key, "caches": out})
	}

	ttl, err := caddy.ParseDuration(req.TTL)
	if err != nil || req.TTL == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(`"ttl" must be a duration such as "30s" or "2h" (%q)`, req.TTL)}
	}
	var lastErr error
	for _, name := range sortedKeys(caches) {
		info, err := caches[name].engine.SetTTL(ctx, req.Key, ttl)
		if errors.Is(err, cachehandler.ErrNotCacheKey) { // another handler's rules may write it
			if lastErr == nil {
				lastErr = err
			}
			continue
		}
		if errors.Is(err, cachehandler.ErrNotStored) {
			lastErr = err
			continue
		}
		if err != nil {
			return entryError(err)
		}
		out[name] = info
	}
	if len(out) == 0 {
		return entryError(lastErr)
	}
	a.log.Info("cache entry TTL set through the admin API", zap.String("key_pattern", store.KeyPattern(req.Key)), zap.Duration("ttl", ttl))
	detail := map[string]string{"key": store.KeyPattern(req.Key) + " " + app.audit().hash(req.Key), "ttl": ttl.String(), "caches": strconv.Itoa(len(out))}
	if req.Cache != "" {
		detail["cache"] = req.Cache
	}
	app.audit().record(ctx, "admin", "cache_ttl", detail)
	return writeJSON(w, http.StatusOK, map[string]any{"key": req.Key, "ttl_seconds": ttl.Seconds(), "caches": out})
}

// cachesNamed returns the running config's edge_cache handlers, or only
// the one named.
func (a *App) cachesNamed(name string) (map[string]*Cache, error) {
	caches := a.handlers.caches.all()
	if name != "" {
		c, ok := caches[name]
		if !ok {
			return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no edge_cache handler named %q", name)}
		}
		caches = map[string]*Cache{name: c}
	}
	if len(caches) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the running config has no edge_cache handler")}
	}
	return caches, nil
}

func anyStored(m map[string]cachehandler.EntryInfo) bool {
	for _, info := range m {
		if info.Stored() || info.Redis == "unreachable" {
			return true // with Redis unreachable, "not in L1" is not "not stored"
		}
	}
	return false
}

// entryError maps the engine's errors to admin statuses.
func entryError(err error) error {
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, cachehandler.ErrNotStored):
		status = http.StatusNotFound
	case errors.Is(err, cachehandler.ErrNotFresh), errors.Is(err, cachehandler.ErrEntryChanged), errors.Is(err, cachehandler.ErrStandardEntry):
		status = http.StatusConflict
	case errors.Is(err, cachehandler.ErrRedisUnavailable):
		status = http.StatusServiceUnavailable
	}
	return caddy.APIError{HTTPStatus: status, Err: err}
}
