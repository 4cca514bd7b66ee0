package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Bus is a Redis pub/sub channel that edge instances use to tell each
// other to drop local copies (cache L1 entries, cached sessions). It keeps
// the PubSub contract: every subscriber hears every message, its own
// publisher's included.
//
// A plain bus is best effort: while Redis is down nothing arrives, which is
// why every local copy also has a short TTL.
//
// A fleet bus (BusOptions.Fleet) adds what a strict read-your-writes
// guarantee needs:
//   - membership: every bus registers in a Redis sorted set with a
//     heartbeat (scored by Redis's own clock), so a writer knows which
//     edges are live;
//   - acknowledged broadcasts: Broadcast returns once every live member
//     has run its handlers for the message, or after a bound;
//   - a hearing check: the bus pings its own subscription every PingEvery.
//     Redis answers a PING on a subscribed connection after every message
//     it published before it, so a PONG for a ping sent at t proves that
//     every message Redis published before t has been handled. Hearing()
//     is true while the newest such proof is at most DeafAfter old (and the
//     bus is registered long enough for every writer to wait for it).
//
// Why that closes the gap when an acknowledgement is late: a writer whose
// Broadcast times out has waited AckWait ≥ DeafAfter after Redis accepted
// its PUBLISH. A member that says Hearing() for a read starting after that
// holds a PONG for a ping sent less than DeafAfter before the read, hence
// processed by Redis after the PUBLISH: the message was handled first.
type Bus struct {
	rdb     *Redis
	channel string
	ackChan string // this bus's acknowledgement channel (fleet)
	members string // sorted set of live members (fleet)
	id      string
	opts    BusOptions
	log     *zap.Logger
	start   time.Time // monotonic base for the atomics below

	mu       sync.Mutex
	handlers map[int]func(string)
	resyncs  map[int]func()
	nextID   int
	waiters  map[string]*ackWaiter
	view     []string // live members at the last heartbeat (fleet)
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	subscribed atomic.Bool  // every channel confirmed on the current connection
	confirmed  atomic.Int64 // since start: send time of the newest answered ping
	joinedAt   atomic.Int64 // since start: when every writer's view has us (0: not yet)
	lastBeat   atomic.Int64 // since start: send time of the newest successful heartbeat
	seq        atomic.Uint64
	acks       chan ack

	heardMu sync.Mutex
	heard   chan struct{} // closed at the next answered ping (WaitHeard)

	// Figures for stats.
	resyncCount atomic.Int64
	ackTimeouts atomic.Int64
	ackFailures atomic.Int64
	broadcasts  atomic.Int64
}

// BusOptions configure a fleet bus. Zero values take the defaults.
type BusOptions struct {
	// Fleet turns on membership, acknowledged broadcasts and Hearing.
	Fleet bool
	// PingEvery is how often the subscription is pinged. Default 5ms.
	PingEvery time.Duration
	// DeafAfter: Hearing() is false when the newest answered ping was sent
	// longer ago than this. Default 20ms. Must not exceed AckWait.
	DeafAfter time.Duration
	// AckWait bounds how long Broadcast waits for acknowledgements.
	// Default 25ms.
	AckWait time.Duration
	// Heartbeat is how often membership is renewed and read. Default 250ms.
	Heartbeat time.Duration
	// MemberTTL: a member that has not renewed for this long is not waited
	// for. Default 1s.
	MemberTTL time.Duration
}

// Bus defaults.
const (
	DefaultBusPingEvery = 5 * time.Millisecond
	DefaultBusDeafAfter = 20 * time.Millisecond
	DefaultBusAckWait   = 25 * time.Millisecond
	DefaultBusHeartbeat = 250 * time.Millisecond
	DefaultBusMemberTTL = time.Second
	maxBusMembers       = 1000
	// A subscription that has answered no ping for this long is replaced
	// (a half-open TCP connection never reports an error by itself).
	busStaleAfter = 2 * time.Second
)

func (o *BusOptions) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.PingEvery, DefaultBusPingEvery)
	def(&o.DeafAfter, DefaultBusDeafAfter)
	def(&o.AckWait, DefaultBusAckWait)
	def(&o.Heartbeat, DefaultBusHeartbeat)
	def(&o.MemberTTL, DefaultBusMemberTTL)
	o.DeafAfter = min(o.DeafAfter, o.AckWait)
	o.MemberTTL = max(o.MemberTTL, 3*o.Heartbeat)
}

// maxBusMessage bounds what a subscriber accepts: a message is a list of
// keys or tags, never a body.
const maxBusMessage = 64 << 10

// fleetMark starts a message that asks for acknowledgement:
// "!<from> <id> <body>".
const fleetMark = '!'

type ack struct{ to, payload string }

type ackWaiter struct {
	pending map[string]struct{}
	done    chan struct{}
}

// NewBus subscribes to channel (prefixed) and starts delivering, best
// effort. go-redis re-subscribes by itself after a reconnect.
func NewBus(r *Redis, channel string, log *zap.Logger) *Bus {
	return NewBusWith(r, channel, log, BusOptions{})
}

// NewBusWith is NewBus with options (a fleet bus).
func NewBusWith(r *Redis, channel string, log *zap.Logger, opts BusOptions) *Bus {
	if log == nil {
		log = zap.NewNop()
	}
	opts.setDefaults()
	idb := make([]byte, 8)
	_, _ = rand.Read(idb)
	id := hex.EncodeToString(idb)
	b := &Bus{
		rdb: r, channel: r.Keys().Channel(channel), id: id, opts: opts, log: log, start: time.Now(),
		handlers: map[int]func(string){}, resyncs: map[int]func(){}, waiters: map[string]*ackWaiter{},
	}
	// Hash tags put the acknowledgement channels and the member set in the
	// bus channel's slot: on Cluster, subscriptions, publishes and acks
	// then stay on one node instead of crossing the cluster bus.
	b.ackChan = b.ackChannel(id)
	b.members = BusMembers(b.channel)
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.wg.Add(1)
	go b.receive(ctx)
	if opts.Fleet {
		b.acks = make(chan ack, 1024)
		b.wg.Add(2)
		go b.sendAcks(ctx)
		go b.heartbeat(ctx)
	}
	return b
}

func (b *Bus) ackChannel(member string) string { return BusAck(b.channel, member) }

// ID names this bus among the fleet's members.
func (b *Bus) ID() string { return b.id }

func (b *Bus) mono() int64 { return int64(time.Since(b.start)) }

func (b *Bus) subscribe(ctx context.Context) *redis.PubSub {
	chans := []string{b.channel}
	if b.opts.Fleet {
		chans = append(chans, b.ackChan)
	}
	return b.rdb.Client().Subscribe(context.WithValue(ctx, probeKey{}, true), chans...)
}

func (b *Bus) wantSubscriptions() int {
	if b.opts.Fleet {
		return 2
	}
	return 1
}

func (b *Bus) receive(ctx context.Context) {
	defer b.wg.Done()
	pctx := context.WithValue(ctx, probeKey{}, true)
	ps := b.subscribe(ctx)
	defer func() { _ = ps.Close() }()
	var pinger *time.Ticker
	var pingDone chan struct{}
	startPinger := func(ps *redis.PubSub) {
		if !b.opts.Fleet {
			return
		}
		pinger = time.NewTicker(b.opts.PingEvery)
		pingDone = make(chan struct{})
		t, done := pinger, pingDone
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-done:
					return
				case <-t.C:
					_ = ps.Ping(pctx, strconv.FormatInt(b.mono(), 10))
				}
			}
		}()
	}
	stopPinger := func() {
		if pinger != nil {
			pinger.Stop()
			close(pingDone)
			pinger = nil
		}
	}
	startPinger(ps)
	defer stopPinger()

	everSubscribed := false
	confirmedSubs := 0
	failures := 0
	lastFresh := b.mono()
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(pctx, 100*time.Millisecond)
		if err != nil {
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() {
				if b.opts.Fleet && b.mono()-max(b.confirmed.Load(), lastFresh) > int64(busStaleAfter) {
					// No answer for too long on a connection that reports no
					// error: start over on a new one.
					b.subscribed.Store(false)
					confirmedSubs = 0
					stopPinger()
					_ = ps.Close()
					ps = b.subscribe(ctx)
					lastFresh = b.mono()
					startPinger(ps)
				}
				continue
			}
			// The connection broke: go-redis reconnects and re-subscribes on
			// the next receive. Messages sent meanwhile are lost.
			if b.subscribed.Swap(false) {
				b.log.Warn("cache bus subscription lost; local copies are not used until it is back", zap.String("channel", b.channel), zap.Error(err))
			}
			confirmedSubs = 0
			failures++
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(failures)*10*time.Millisecond, 500*time.Millisecond)):
			}
			continue
		}
		failures = 0
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			confirmedSubs++
			if confirmedSubs < b.wantSubscriptions() {
				continue
			}
			if everSubscribed {
				// Messages may have been missed while the connection was
				// down: handlers forget what they could not hear about.
				b.resyncCount.Add(1)
				b.runResyncs()
				b.log.Info("cache bus subscription back; local copies dropped and rebuilt", zap.String("channel", b.channel))
			}
			everSubscribed = true
			b.subscribed.Store(true)
		case *redis.Pong:
			if sent, err := strconv.ParseInt(m.Payload, 10, 64); err == nil {
				for {
					old := b.confirmed.Load()
					if sent <= old || b.confirmed.CompareAndSwap(old, sent) {
						break
					}
				}
				b.heardMu.Lock()
				if b.heard != nil {
					close(b.heard)
					b.heard = nil
				}
				b.heardMu.Unlock()
			}
		case *redis.Message:
			if len(m.Payload) > maxBusMessage {
				b.log.Warn("dropping oversized bus message", zap.String("channel", b.channel), zap.Int("bytes", len(m.Payload)))
				continue
			}
			if m.Channel == b.ackChan {
				b.gotAck(m.Payload)
				continue
			}
			b.deliver(m.Payload)
		}
	}
}

// deliver runs the handlers for one message and acknowledges it when the
// sender asked for it.
func (b *Bus) deliver(payload string) {
	body := payload
	if len(payload) > 0 && payload[0] == fleetMark {
		from, rest, ok1 := strings.Cut(payload[1:], " ")
		id, b2, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 {
			return
		}
		body = b2
		defer func() {
			if from != b.id && b.acks != nil {
				select {
				case b.acks <- ack{to: b.ackChannel(from), payload: id + " " + b.id}:
				default: // the sender's wait is bounded; never block delivery
				}
			}
		}()
	}
	b.mu.Lock()
	hs := make([]func(string), 0, len(b.handlers))
	for _, h := range b.handlers {
		hs = append(hs, h)
	}
	b.mu.Unlock()
	for _, h := range hs {
		h(body)
	}
}

func (b *Bus) runResyncs() {
	b.mu.Lock()
	fs := make([]func(), 0, len(b.resyncs))
	for _, f := range b.resyncs {
		fs = append(fs, f)
	}
	b.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// publish sends payload on channel. On Cluster a PUBLISH names no key, so
// go-redis would send it to any node and Redis would relay it over the
// cluster bus (tens of ms under load, measured); it goes to the master
// of the channels' slot instead, where the subscriptions are, and is
// delivered at once. That bypasses the cluster client's hooks, so the
// breaker check and the budget are applied here; a failure re-reads the
// slot map (like the hook) but is not counted by the breaker: pub/sub
// trouble must not take the request path's Redis away.
func (b *Bus) publish(ctx context.Context, channel, payload string) error {
	cc, ok := b.rdb.Client().(*redis.ClusterClient)
	if !ok {
		return b.rdb.Client().Publish(ctx, channel, payload).Err()
	}
	if ctx.Value(pastBreakerKey{}) == nil && !b.rdb.Available() {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, b.rdb.CallTimeout())
	defer cancel()
	node, err := cc.MasterForKey(ctx, b.channel)
	if err == nil {
		err = node.Publish(ctx, channel, payload).Err()
	}
	if IsConnectivityError(err) {
		b.rdb.reloadTopology()
	}
	return err
}

func (b *Bus) sendAcks(ctx context.Context) {
	defer b.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-b.acks:
			if err := b.publish(ctx, a.to, a.payload); err != nil {
				b.ackFailures.Add(1)
			}
		}
	}
}

func (b *Bus) gotAck(payload string) {
	id, from, ok := strings.Cut(payload, " ")
	if !ok {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.waiters[id]
	if w == nil {
		return
	}
	delete(w.pending, from)
	if len(w.pending) == 0 {
		delete(b.waiters, id)
		close(w.done)
	}
}

// heartbeatScript renews this member and returns the live ones, all on
// Redis's clock so edges with skewed clocks agree on who is live.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
`)

func (b *Bus) heartbeat(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.opts.Heartbeat)
	defer t.Stop()
	streakStart := int64(-1)
	for {
		sent := b.mono()
		members, err := heartbeatScript.Run(ctx, b.rdb.Client(), []string{b.members}, b.id,
			b.opts.MemberTTL.Milliseconds(), maxBusMembers).StringSlice()
		if err == nil {
			last := b.lastBeat.Load()
			// Our registration stays in every writer's view while it is
			// renewed within MemberTTL; a longer gap may have dropped us, and
			// we count as new again.
			if streakStart < 0 || sent-last >= int64(b.opts.MemberTTL-b.opts.Heartbeat) {
				streakStart = sent
			}
			b.lastBeat.Store(sent)
			// Writers read the members at each of their heartbeats: after two
			// periods every live writer waits for us.
			b.joinedAt.Store(streakStart + int64(2*b.opts.Heartbeat+b.opts.Heartbeat/2))
			others := members[:0]
			for _, m := range members {
				if m != b.id {
					others = append(others, m)
				}
			}
			b.mu.Lock()
			b.view = others
			b.mu.Unlock()
		} else if ctx.Err() == nil {
			b.log.Debug("cache bus heartbeat failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Hearing reports whether every message published on the bus more than
// DeafAfter ago has been handled here, and every writer waits for this
// member. A plain bus reports whether it is subscribed.
func (b *Bus) Hearing() bool {
	if !b.subscribed.Load() {
		return false
	}
	if !b.opts.Fleet {
		return true
	}
	now := b.mono()
	joined := b.joinedAt.Load()
	if joined == 0 || now < joined || now-b.lastBeat.Load() >= int64(b.opts.MemberTTL-b.opts.Heartbeat) {
		return false
	}
	return now-b.confirmed.Load() <= int64(b.opts.DeafAfter)
}

// Mark is a point in the bus's history, for WaitHeard.
type Mark struct {
	at      int64
	resyncs int64
}

// Now marks the present.
func (b *Bus) Now() Mark { return Mark{at: b.mono(), resyncs: b.resyncCount.Load()} }

// WaitHeard waits, at most max, until every message published before m
// has been handled here (an answered ping sent after m, on the same
// subscription). It reports false when that could not be proven in time or
// the subscription broke since m (messages may have been lost). A plain
// bus proves nothing and returns false.
func (b *Bus) WaitHeard(ctx context.Context, m Mark, max time.Duration) bool {
	if !b.opts.Fleet {
		return false
	}
	var timer *time.Timer
	for {
		if b.resyncCount.Load() != m.resyncs || !b.subscribed.Load() {
			return false
		}
		if b.confirmed.Load() >= m.at {
			return b.resyncCount.Load() == m.resyncs
		}
		b.heardMu.Lock()
		if b.heard == nil {
			b.heard = make(chan struct{})
		}
		ch := b.heard
		b.heardMu.Unlock()
		if timer == nil {
			timer = time.NewTimer(max)
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// AckResult says how a Broadcast went.
type AckResult struct {
	Expected int           // live members other than this one
	Acked    int           // of those, how many acknowledged in time
	Waited   time.Duration // how long Broadcast waited
	Err      error         // the PUBLISH failed (Redis unreachable)
}

// Broadcast publishes msg and waits until every other live member has run
// its handlers for it, at most AckWait. This bus's own handlers run too
// (see PubSub), later and unawaited. When the PUBLISH fails it still
// waits out AckWait (measured from when Redis became unreachable, so a
// long outage costs nothing): members that could hear Redis before it
// failed have stopped trusting their copies by then. A plain bus only
// publishes.
func (b *Bus) Broadcast(ctx context.Context, msg string) (res AckResult) {
	if !b.opts.Fleet {
		return AckResult{Err: b.Publish(ctx, msg)}
	}
	b.broadcasts.Add(1)
	start := time.Now()
	id := strconv.FormatUint(b.seq.Add(1), 36)
	b.mu.Lock()
	w := &ackWaiter{pending: make(map[string]struct{}, len(b.view)), done: make(chan struct{})}
	for _, m := range b.view {
		w.pending[m] = struct{}{}
	}
	expected := len(w.pending)
	if expected > 0 {
		b.waiters[id] = w
	}
	b.mu.Unlock()
	res.Expected = expected
	defer func() {
		b.mu.Lock()
		delete(b.waiters, id)
		res.Acked = expected - len(w.pending)
		b.mu.Unlock()
		res.Waited = time.Since(start)
	}()
	// Past the breaker: see PastBreaker.
	err := b.publish(PastBreaker(ctx), b.channel, string(fleetMark)+b.id+" "+id+" "+msg)
	if err != nil {
		res.Err = err
		deadline := start.Add(b.opts.AckWait)
		if since := b.rdb.Breaker().OpenSince(); !since.IsZero() {
			deadline = since.Add(b.opts.AckWait)
		}
		if d := time.Until(deadline); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
		return res
	}
	if expected == 0 {
		return res
	}
	t := time.NewTimer(b.opts.AckWait - time.Since(start))
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		b.ackTimeouts.Add(1)
	case <-ctx.Done():
	}
	return res
}

// Publish sends msg to every instance, this one included, without waiting.
func (b *Bus) Publish(ctx context.Context, msg string) error {
	return b.publish(ctx, b.channel, msg)
}

// Subscribe registers fn for every message, this bus's own included (see
// PubSub); the returned func removes it. Handlers run one at a time, in
// publication order.
func (b *Bus) Subscribe(fn func(msg string)) (unsubscribe func()) {
	return register(b, b.handlers, fn)
}

// OnResync registers fn to run when the subscription comes back after a
// break (messages may have been lost); the returned func removes it.
func (b *Bus) OnResync(fn func()) (remove func()) {
	return register(b, b.resyncs, fn)
}

// register adds fn to m (one of b's callback sets) under a new id and
// returns the func that removes it.
func register[F any](b *Bus, m map[int]F, fn F) (remove func()) {
	b.mu.Lock()
	id := b.nextID
	b.nextID++
	m[id] = fn
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(m, id)
		b.mu.Unlock()
	}
}

// BusStats are a bus's figures for the admin API.
type BusStats struct {
	Fleet       bool  `json:"fleet"`
	Hearing     bool  `json:"hearing"`
	Members     int   `json:"members"` // other live members seen at the last heartbeat
	Resyncs     int64 `json:"resyncs"`
	Broadcasts  int64 `json:"broadcasts"`
	AckTimeouts int64 `json:"ack_timeouts"`
}

// Stats reports the bus's state.
func (b *Bus) Stats() BusStats {
	b.mu.Lock()
	n := len(b.view)
	b.mu.Unlock()
	return BusStats{Fleet: b.opts.Fleet, Hearing: b.Hearing(), Members: n, Resyncs: b.resyncCount.Load(),
		Broadcasts: b.broadcasts.Load(), AckTimeouts: b.ackTimeouts.Load()}
}

// Close stops receiving and leaves the fleet.
func (b *Bus) Close() {
	b.cancel()
	b.wg.Wait()
	if b.opts.Fleet {
		ctx, cancel := context.WithTimeout(context.Background(), b.rdb.CallTimeout())
		_ = b.rdb.Client().ZRem(ctx, b.members, b.id).Err()
		cancel()
	}
}
