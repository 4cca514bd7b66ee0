package sessionauth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/lru"
	"github.com/ticketi/edge/internal/store"
)

// SessionInfo is one entry of List: the session and its handle, never the
// token.
type SessionInfo struct {
	Handle string `json:"handle"`
	Session
}

// Errors for the admin operations and Create.
var (
	// ErrUnavailable wraps store failures (Redis down, breaker open).
	ErrUnavailable = errors.New("sessionauth: session store unavailable")
	// ErrNotFound: DestroyHandle found no session with that handle.
	ErrNotFound = errors.New("sessionauth: no such session")
	// ErrBadUserID / ErrBadHandle reject malformed admin input.
	ErrBadUserID = fmt.Errorf("sessionauth: user id must be 1-%d printable characters", MaxUserIDLen)
	ErrBadHandle = fmt.Errorf("sessionauth: handle must be %d lower-case hex characters", handleLen)
)

// Manager creates, validates and destroys sessions. It is safe for
// concurrent use.
type Manager struct {
	idleMs, absMs, touchMs  int64
	localMs, negMs, graceMs int64
	keepMs                  int64 // how long a cache entry is worth keeping
	settleMs                int64

	keys    keyring
	backend backend
	redis   *store.Redis
	express *expressCompat
	now     func() time.Time
	log     *zap.Logger
	bus     store.PubSub
	unsub   func()

	pos    *lru.Sharded[cacheKey, *entry]
	neg    *lru.Sharded[cacheKey, int64] // until (unix ms)
	flight flight
	// pending: logouts waiting for Redis (nil with the memory store).
	pending *store.ReplayQueue
	// epoch moves on every local invalidation; a lookup that started
	// before one does not put its (possibly stale) answer in the cache.
	epoch atomic.Uint64
	// seenGen is the connection's outage count this Manager last saw with
	// Redis reachable; settleUntil ends the settling after an outage.
	seenGen     atomic.Uint64
	settleUntil atomic.Int64
	watching    atomic.Bool // a pending-logout watcher runs
	closed      chan struct{}

	stats     counters
	perm      permissionWatch
	storageFP string
	closeOnce sync.Once
}

// New checks opts and returns a Manager. It does not contact Redis.
func New(opts Options) (*Manager, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	m := &Manager{
		idleMs:  opts.IdleTimeout.Milliseconds(),
		absMs:   opts.AbsoluteTimeout.Milliseconds(),
		touchMs: opts.TouchInterval.Milliseconds(),
		localMs: max(0, opts.LocalTTL.Milliseconds()),
		negMs:   max(0, opts.NegativeTTL.Milliseconds()),
		graceMs: max(0, opts.OutageGrace.Milliseconds()),
		keys:    newKeyring(opts.SigningKeys, opts.StorageKey),
		redis:   opts.Redis,
		now:     opts.Now,
		log:     opts.Logger,
		bus:     opts.Bus,
		pos:     newLocalCache[*entry](opts.LocalSize),
		neg:     newLocalCache[int64](max(1, opts.LocalSize/4)),
		closed:  make(chan struct{}),
	}
	m.keepMs = max(m.localMs, m.graceMs)
	fp := sha256.Sum256(append([]byte("ticketi-edge/sessionauth/fingerprint/v1\x00"), m.keys.storage...))
	m.storageFP = hex.EncodeToString(fp[:6])
	if opts.Redis != nil {
		m.backend = &redisBackend{r: opts.Redis, log: opts.Logger}
		m.pending = store.ReplayQueueOn(opts.Redis, "sessionauth.destroys", maxPendingDestroys)
		m.perm.pattern[nativeKeys] = opts.Redis.Keys().Session("*")
		m.settleMs = max(0, opts.RecoverySettle.Milliseconds())
		m.seenGen.Store(opts.Redis.Outages())
		if !opts.Redis.Available() {
			// Started during an outage: settle when Redis is first reached.
			m.seenGen.Store(opts.Redis.Outages() - 1)
		}
	} else {
		m.backend = newMemoryBackend(opts.Now, opts.MemoryLimit)
	}
	if opts.Express != nil {
		x := newExpressCompat(*opts.Express, opts.Redis)
		m.express = x
		m.perm.pattern[expressKeys] = store.ExpressSession(x.prefix, "*")
	}
	if m.bus != nil {
		m.unsub = m.bus.Subscribe(m.onBus)
	}
	if m.pending != nil && m.pending.Pending() {
		m.watchPending() // left by the previous config
	}
	m.log.Debug("session manager ready",
		zap.String("store", map[bool]string{true: "redis", false: "memory"}[opts.Redis != nil]),
		zap.String("storage_key_id", m.storageFP),
		zap.Int("signing_keys", len(opts.SigningKeys)),
		zap.Bool("express_compat", m.express != nil))
	return m, nil
}

// StorageKeyID is a fingerprint of the storage key. If it changes between
// deployments, every existing session has become unreachable.
func (m *Manager) StorageKeyID() string { return m.storageFP }

// Close detaches the Manager from its Bus. It does not close Redis, which
// is shared.
func (m *Manager) Close() {
	m.closeOnce.Do(func() {
		close(m.closed)
		if m.unsub != nil {
			m.unsub()
		}
	})
}

func (m *Manager) nowMs() int64 { return m.now().UnixMilli() }

// SignCookie returns the cookie value for token ("" if token is not one of
// ours). The value is URL- and cookie-safe as is.
func (m *Manager) SignCookie(token string) string {
	if !wellFormedToken(token) {
		return ""
	}
	return m.keys.signCookie(token)
}

// VerifyCookie checks a cookie (or bearer) value made by SignCookie with
// any key of the rotation list and returns its token. Anything malformed,
// oversized or forged is simply not ok.
func (m *Manager) VerifyCookie(value string) (string, bool) {
	if len(value) > MaxCookieLen {
		return "", false
	}
	return m.keys.verifyCookie(value)
}

func keyOfID(storageID string) cacheKey {
	var k cacheKey
	_, _ = hex.Decode(k[:], []byte(storageID))
	return k
}

// expiresOf is when s ends: idle deadline or absolute cap, whichever first.
func (m *Manager) expiresOf(s Session) int64 {
	return min(s.LastActivity+m.idleMs, s.CreatedAt+m.absMs)
}

func (m *Manager) newEntry(s Session, confirmed int64) *entry {
	var gen uint64
	if m.redis != nil {
		gen = m.redis.Outages()
	}
	return &entry{sess: s, expiresMs: m.expiresOf(s), confirmed: confirmed, gen: gen}
}

// writeFor builds the write for s at now; ok is false when s has no life left.
func (m *Manager) writeFor(id string, s Session, now int64) (write, bool) {
	exp := m.expiresOf(s)
	if exp <= now {
		return write{}, false
	}
	return write{id: id, s: s, ttl: time.Duration(exp-now) * time.Millisecond, nowMs: now, expiresMs: exp}, true
}

func (m *Manager) storeErr(err error) error {
	if err == nil || errors.Is(err, ErrStoreFull) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Create starts a session for id and returns its token (256 random bits,
// base64url): the caller sets SignCookie(token) as the cookie. It fails
// with ErrUnavailable when the store cannot be written (the login must not
// pretend to succeed).
func (m *Manager) Create(ctx context.Context, id Identity, meta Meta) (string, Session, error) {
	if err := id.validate(); err != nil {
		return "", Session{}, err
	}
	if !m.backend.available() {
		return "", Session{}, m.storeErr(store.ErrUnavailable)
	}
	token := newToken()
	k := m.keys.storageKey(token)
	sid := k.id()
	now := m.nowMs()
	meta = cleanMeta(meta)
	s := Session{
		UserID: id.UserID, Username: id.Username, IsVerified: id.IsVerified,
		CreatedAt: now, LastActivity: now, IPAddress: meta.IP, UserAgent: meta.UserAgent,
	}
	w, _ := m.writeFor(sid, s, now) // a new session always has life left
	epoch := m.epoch.Load()
	if err := m.backend.create(ctx, w); err != nil {
		m.notePermission(nativeKeys, err)
		return "", Session{}, m.storeErr(err)
	}
	m.cacheIf(k, m.newEntry(s, now), epoch)
	m.stats.creates.Add(1)
	m.log.Debug("session created", zap.String("session", HashForLog(token)), zap.String("handle", handleOf(sid)))
	return token, s, nil
}

// cacheIf publishes e unless an invalidation happened since epoch. The check
// runs under the shard lock and invalidations bump the epoch before they
// remove, so a stale answer can never outlive the invalidation.
func (m *Manager) cacheIf(k cacheKey, e *entry, epoch uint64) {
	m.pos.AddIf(k, e, func() bool { return m.epoch.Load() == epoch })
}

func (m *Manager) negIf(k cacheKey, now int64, epoch uint64) {
	if m.negMs <= 0 {
		return
	}
	m.neg.AddIf(k, now+m.negMs, func() bool { return m.epoch.Load() == epoch })
}

// dropLocal forgets a session locally and remembers it as gone.
func (m *Manager) dropLocal(k cacheKey) {
	m.epoch.Add(1)
	m.pos.Remove(k)
	if m.negMs > 0 {
		m.neg.Add(k, m.nowMs()+m.negMs)
	}
}

func (m *Manager) dropUserLocal(userID string) {
	m.epoch.Add(1)
	m.pos.RemoveIf(func(_ cacheKey, e *entry) bool { return e.sess.UserID == userID })
}

// Validate looks a token up (as returned by VerifyCookie). Order: the local
// cache (a session confirmed within LocalTTL), the negative cache, then the
// store with one call per session at a time; if the store cannot be asked, a
// session confirmed within OutageGrace is still Valid and anything else is
// Unavailable (never Unknown: no false 401). A Valid session whose last
// activity is older than TouchInterval is touched (idle deadline extended,
// one write; meta, when not empty, becomes the session's ipAddress and
// userAgent so List shows where it was last used). The absolute lifetime is
// never extended, and nothing is written while the store is failing.
func (m *Manager) Validate(ctx context.Context, token string, meta Meta) (Session, Result) {
	if token == "" {
		return m.result(Session{}, Missing)
	}
	if !wellFormedToken(token) {
		return m.result(Session{}, Invalid)
	}
	k := m.keys.storageKey(token)
	if m.pending != nil && m.pending.Pending() {
		m.kickPending()
		if m.pending.Has(k.id()) {
			// Logged out while Redis was down; not yet removed there.
			return m.result(Session{}, Unknown)
		}
	}
	e, r, outage := m.resolve(ctx, k, func(ctx context.Context, now int64) lookup {
		return m.loadNative(ctx, k.id(), now)
	})
	if r != Valid {
		if r == Expired {
			m.log.Debug("session expired", zap.String("session", HashForLog(token)))
		}
		return m.result(Session{}, r)
	}
	if outage {
		return m.result(e.sess, Valid) // no touch: the store just failed
	}
	s, r := m.maybeTouch(ctx, k, e, meta)
	return m.result(s, r)
}

func (m *Manager) result(s Session, r Result) (Session, Result) {
	m.stats.results[r].Add(1)
	return s, r
}

// resolve is the lookup path shared by our sessions and express ones.
// outage is set when a Valid answer comes from the outage fallback (or the
// settling after one): it must not be touched.
func (m *Manager) resolve(ctx context.Context, k cacheKey, load func(context.Context, int64) lookup) (e *entry, r Result, outage bool) {
	now := m.nowMs()
	gen, settling := m.generation(now)
	if c, ok := m.pos.Get(k); ok {
		if m.trusted(c, now, gen) {
			m.stats.localHits.Add(1)
			return c, Valid, false
		}
		if now-c.confirmed > m.keepMs {
			m.pos.Remove(k) // too old even for the outage fallback
		}
		// Otherwise kept: the store decides, or the outage fallback uses it.
	}
	if until, ok := m.neg.Get(k); ok {
		if now < until {
			m.stats.negativeHits.Add(1)
			return nil, Unknown, false
		}
		m.neg.Remove(k)
	}
	var res lookup
	if !m.backend.available() {
		res = lookup{err: store.ErrUnavailable}
	} else {
		epoch := m.epoch.Load()
		res = m.flight.do(k, func() lookup {
			// A caller that missed the cache just as an earlier flight for
			// this key finished starts a new flight: that flight has filled
			// the cache by now, so look again before asking the store.
			if c, ok := m.pos.Get(k); ok && m.trusted(c, now, gen) {
				return lookup{e: c}
			}
			m.stats.storeLookups.Add(1)
			// Shared by every waiter: not cancelled with the first caller.
			r := load(context.WithoutCancel(ctx), now)
			switch {
			case r.err != nil:
			case r.e == nil:
				m.pos.Remove(k)
				m.negIf(k, now, epoch)
			case now >= r.e.expiresMs:
				m.pos.Remove(k)
			case settling && !m.confirmedSince(k, gen):
				// Not a confirmation yet: see settledAnswer.
			default:
				r.e.gen = gen
				m.cacheIf(k, r.e, epoch)
			}
			return r
		})
	}
	switch {
	case res.err != nil:
		m.stats.storeErrors.Add(1)
		return m.outageAnswer(k, now)
	case res.e == nil:
		return nil, Unknown, false
	case now >= res.e.expiresMs:
		return nil, Expired, false
	case settling && !m.confirmedSince(k, gen):
		return m.settledAnswer(k, res.e, now)
	default:
		return res.e, Valid, false
	}
}

// outageAnswer is what a session gets while the store cannot be asked: Valid
// if this instance confirmed it within OutageGrace, else Unavailable.
func (m *Manager) outageAnswer(k cacheKey, now int64) (*entry, Result, bool) {
	if c, ok := m.pos.Get(k); ok && m.graceMs > 0 && now-c.confirmed <= m.graceMs {
		if now >= c.expiresMs {
			return nil, Expired, true
		}
		m.stats.outageServed.Add(1)
		return c, Valid, true
	}
	return nil, Unavailable, true
}

// settledAnswer answers for a session the store has, while Redis has just
// come back and the logouts other instances queued during the outage may
// not have landed yet (RecoverySettle): the store's "live" is not trusted
// afresh, so the session keeps the outage rules (a confirmation from
// before the outage, within OutageGrace) until the settling ends. A logout
// another instance took during the outage is therefore never accepted here
// past OutageGrace, whether or not Redis has come back meanwhile.
func (m *Manager) settledAnswer(k cacheKey, fresh *entry, now int64) (*entry, Result, bool) {
	c, r, _ := m.outageAnswer(k, now)
	if r != Valid {
		m.stats.settleRefused.Add(1)
		return nil, Unavailable, true
	}
	// The store's copy, with the old confirmation: it stays an outage entry.
	return &entry{sess: fresh.sess, expiresMs: min(fresh.expiresMs, c.expiresMs), confirmed: c.confirmed, gen: c.gen, express: c.express}, Valid, true
}

// trusted reports whether a cached entry may answer without asking the
// store: confirmed within LocalTTL (a zero or negative LocalTTL trusts
// nothing), since the last outage began, and not past its deadline.
func (m *Manager) trusted(c *entry, now int64, gen uint64) bool {
	return m.localMs > 0 && c.gen == gen && now-c.confirmed <= m.localMs && now < c.expiresMs
}

// confirmedSince reports whether this instance holds a confirmation of k
// made since the last outage began (a login here, or a read after the
// settling).
func (m *Manager) confirmedSince(k cacheKey, gen uint64) bool {
	c, ok := m.pos.Get(k)
	return ok && c.gen == gen
}

func (m *Manager) loadNative(ctx context.Context, id string, now int64) lookup {
	s, found, err := m.backend.get(ctx, id)
	m.notePermission(nativeKeys, err)
	if err != nil {
		return lookup{err: err}
	}
	if !found {
		return lookup{}
	}
	e := m.newEntry(s, now)
	if now >= e.expiresMs {
		// Past its deadline on our clock but still in the store (clock skew
		// between instances, or timeouts lowered by a config change).
		_, _, _ = m.backend.remove(ctx, id)
	}
	return lookup{e: e}
}

// maybeTouch extends the idle deadline when the last recorded activity is
// at least TouchInterval old. Only one request per session does it; the
// others go on with the session as it is (it is valid either way).
func (m *Manager) maybeTouch(ctx context.Context, k cacheKey, e *entry, meta Meta) (Session, Result) {
	now := m.nowMs()
	s := e.sess
	if now-s.LastActivity < m.touchMs || !m.backend.available() || !e.touching.CompareAndSwap(false, true) {
		return s, Valid
	}
	ns := s
	ns.LastActivity = now
	// The session list shows where and with what a session was last used.
	mm := cleanMeta(meta)
	if mm.IP != "" {
		ns.IPAddress = mm.IP
	}
	if mm.UserAgent != "" {
		ns.UserAgent = mm.UserAgent
	}
	id := k.id()
	w, ok := m.writeFor(id, ns, now)
	if !ok {
		e.touching.Store(false)
		return s, Valid
	}
	epoch := m.epoch.Load()
	alive, err := m.backend.touch(ctx, w)
	if err != nil {
		e.touching.Store(false)
		m.stats.touchErrors.Add(1)
		m.log.Debug("session touch failed", zap.String("handle", handleOf(id)), errField(err))
		return s, Valid
	}
	if !alive {
		// Destroyed since it was read (logout on another instance).
		m.dropLocal(k)
		return Session{}, Unknown
	}
	m.cacheIf(k, m.newEntry(ns, now), epoch)
	m.stats.touches.Add(1)
	return ns, Valid
}

// Destroy ends the session of token (logout). It is idempotent; the local
// copy is dropped and the other instances are told even if the store write
// fails (the error then wraps ErrUnavailable).
func (m *Manager) Destroy(ctx context.Context, token string) error {
	if !wellFormedToken(token) {
		return nil // nothing can be stored under it
	}
	k := m.keys.storageKey(token)
	id := k.id()
	m.dropLocal(k)
	var err error
	found := false
	if m.backend.available() {
		_, found, err = m.backend.remove(ctx, id)
	} else {
		err = store.ErrUnavailable
	}
	if err != nil && store.IsConnectivityError(err) {
		m.queueDestroy(id) // replayed when Redis is back
	}
	m.publish(ctx, busDestroy+id)
	if found {
		m.stats.destroys.Add(1)
	}
	m.log.Debug("session destroyed", zap.String("session", HashForLog(token)), zap.Bool("found", found))
	return m.storeErr(err)
}

// DestroyUser ends every session of userID (the seed's destroyByUserId,
// "log out everywhere") and returns how many there were.
func (m *Manager) DestroyUser(ctx context.Context, userID string) (int, error) {
	if !ValidUserID(userID) {
		return 0, ErrBadUserID
	}
	m.dropUserLocal(userID)
	var ids []string
	var err error
	if m.backend.available() {
		ids, err = m.backend.removeUser(ctx, userID)
	} else {
		err = store.ErrUnavailable
	}
	// Again: a lookup that raced with the removal may have re-cached one.
	m.dropUserLocal(userID)
	m.publish(ctx, busDestroyUser+userID)
	m.stats.destroys.Add(uint64(len(ids)))
	return len(ids), m.storeErr(err)
}

// List returns the live sessions of userID (the seed's getAllSessions),
// most recently used first, with handles instead of tokens.
func (m *Manager) List(ctx context.Context, userID string) ([]SessionInfo, error) {
	if !ValidUserID(userID) {
		return nil, ErrBadUserID
	}
	if !m.backend.available() {
		return nil, m.storeErr(store.ErrUnavailable)
	}
	now := m.nowMs()
	all, err := m.backend.list(ctx, userID, now)
	if err != nil {
		return nil, m.storeErr(err)
	}
	out := make([]SessionInfo, 0, len(all))
	for _, st := range all {
		if now >= m.expiresOf(st.s) {
			continue
		}
		out = append(out, SessionInfo{Handle: handleOf(st.id), Session: st.s})
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		return cmp.Or(cmp.Compare(b.LastActivity, a.LastActivity), strings.Compare(a.Handle, b.Handle))
	})
	return out, nil
}

// DestroyHandle ends the session of userID named by handle (from List).
func (m *Manager) DestroyHandle(ctx context.Context, userID, handle string) error {
	if !ValidUserID(userID) {
		return ErrBadUserID
	}
	if !validHandle(handle) {
		return ErrBadHandle
	}
	if !m.backend.available() {
		return m.storeErr(store.ErrUnavailable)
	}
	all, err := m.backend.list(ctx, userID, m.nowMs())
	if err != nil {
		return m.storeErr(err)
	}
	var match []string
	for _, st := range all {
		if handleOf(st.id) == handle {
			match = append(match, st.id)
		}
	}
	if len(match) == 0 {
		return ErrNotFound
	}
	// Two sessions of one user sharing 48 bits of a hash would be a first;
	// if it happens, both go (the admin asked to end "that" session).
	for _, id := range match {
		m.dropLocal(keyOfID(id))
		_, found, err := m.backend.remove(ctx, id)
		if err != nil {
			return m.storeErr(err)
		}
		if found {
			m.stats.destroys.Add(1)
		}
		m.publish(ctx, busDestroy+id)
	}
	return nil
}

func errField(err error) zap.Field { return zap.Error(err) }
