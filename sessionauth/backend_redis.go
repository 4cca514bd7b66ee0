package sessionauth

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/store"
)

// redisBackend keeps sessions in the shared Redis:
//
//	<prefix>session:<storage id>      string, the Session JSON, PX = remaining life
//	<prefix>sessions:user:<userId>    zset of storage ids scored by expiry (unix ms),
//	                                  PEXPIRE = the longest member's remaining life
//
// The two keys live in different hash slots, so nothing here is a multi-key
// script: each write is one pipeline (go-redis splits a pipeline by node on
// Cluster), i.e. one round trip on a single node. Nothing uses KEYS or SCAN.
type redisBackend struct {
	r   *store.Redis
	log *zap.Logger
}

func (b *redisBackend) available() bool { return b.r.Available() }

func (b *redisBackend) sessionKey(id string) string { return b.r.Keys().Session(id) }

func (b *redisBackend) userKey(userID string) string { return b.r.Keys().SessionIndex(userID) }

// indexWrite queues the index update for w: drop expired members, add or
// re-score this one, and make the index live at least as long as it (NX
// sets a TTL on a fresh key, GT only ever extends one).
func (b *redisBackend) indexWrite(ctx context.Context, pipe redis.Pipeliner, w write) {
	key := b.userKey(w.s.UserID)
	pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(w.nowMs, 10))
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(w.expiresMs), Member: w.id})
	ms := w.ttl.Milliseconds()
	pipe.Do(ctx, "pexpire", key, ms, "NX")
	pipe.Do(ctx, "pexpire", key, ms, "GT")
}

func (b *redisBackend) create(ctx context.Context, w write) error {
	val, err := json.Marshal(w.s)
	if err != nil {
		return err
	}
	pipe := b.r.Client().Pipeline()
	set := pipe.SetArgs(ctx, b.sessionKey(w.id), val, redis.SetArgs{Mode: "NX", TTL: w.ttl})
	b.indexWrite(ctx, pipe, w)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	if errors.Is(set.Err(), redis.Nil) {
		// 256 random bits collided: cannot happen short of a broken RNG.
		return errors.New("sessionauth: session id collision")
	}
	return set.Err()
}

func (b *redisBackend) get(ctx context.Context, id string) (Session, bool, error) {
	raw, err := b.r.Client().Get(ctx, b.sessionKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Session{}, false, nil
	}
	if err != nil {
		return Session{}, false, err
	}
	s, ok := decodeStored(raw)
	if !ok {
		// A corrupt entry is deleted, so the next login starts clean.
		b.log.Warn("corrupt session entry deleted", zap.String("handle", handleOf(id)), zap.Int("bytes", len(raw)))
		_ = b.r.Client().Unlink(context.WithoutCancel(ctx), b.sessionKey(id)).Err()
		return Session{}, false, nil
	}
	return s, true, nil
}

func (b *redisBackend) touch(ctx context.Context, w write) (bool, error) {
	val, err := json.Marshal(w.s)
	if err != nil {
		return false, err
	}
	pipe := b.r.Client().Pipeline()
	// XX: a session destroyed since it was read is not brought back.
	set := pipe.SetArgs(ctx, b.sessionKey(w.id), val, redis.SetArgs{Mode: "XX", TTL: w.ttl})
	b.indexWrite(ctx, pipe, w)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	if errors.Is(set.Err(), redis.Nil) {
		return false, nil
	}
	return set.Err() == nil, set.Err()
}

func (b *redisBackend) remove(ctx context.Context, id string) (string, bool, error) {
	raw, err := b.r.Client().GetDel(ctx, b.sessionKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	s, ok := decodeStored(raw)
	if !ok {
		return "", true, nil
	}
	// Best effort: a member left behind is pruned by List or DestroyUser.
	_ = b.r.Client().ZRem(ctx, b.userKey(s.UserID), id).Err()
	return s.UserID, true, nil
}

func (b *redisBackend) removeUser(ctx context.Context, userID string) ([]string, error) {
	key := b.userKey(userID)
	var removed []string
	for range maxUserBatches {
		ids, err := b.r.Client().ZRange(ctx, key, 0, maxListed-1).Result()
		if err != nil {
			return removed, err
		}
		if len(ids) == 0 {
			return removed, nil
		}
		pipe := b.r.Client().Pipeline()
		dels := make([]*redis.IntCmd, len(ids))
		members := make([]any, len(ids))
		for i, id := range ids {
			dels[i] = pipe.Unlink(ctx, b.sessionKey(id))
			members[i] = id
		}
		// ZREM rather than DEL of the index: a session created meanwhile
		// keeps its entry. The key disappears when it empties.
		pipe.ZRem(ctx, key, members...)
		if _, err := pipe.Exec(ctx); err != nil {
			return removed, err
		}
		for i, d := range dels {
			if d.Val() == 1 {
				removed = append(removed, ids[i])
			}
		}
	}
	return removed, nil
}

func (b *redisBackend) list(ctx context.Context, userID string, nowMs int64) ([]stored, error) {
	key := b.userKey(userID)
	pipe := b.r.Client().Pipeline()
	pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(nowMs, 10))
	rng := pipe.ZRange(ctx, key, 0, maxListed-1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	ids := rng.Val()
	if len(ids) == 0 {
		return nil, nil
	}
	// One GET per member in a pipeline rather than MGET: the session keys
	// live in different hash slots.
	pipe = b.r.Client().Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, b.sessionKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	var out []stored
	var gone []any
	for i, g := range gets {
		raw, err := g.Bytes()
		s, ok := decodeStored(raw)
		if err != nil || !ok || s.UserID != userID {
			gone = append(gone, ids[i])
			continue
		}
		out = append(out, stored{id: ids[i], s: s})
	}
	if len(gone) > 0 {
		// Lazy cleanup of members whose session expired or was deleted.
		_ = b.r.Client().ZRem(ctx, key, gone...).Err()
	}
	return out, nil
}
