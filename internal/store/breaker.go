package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrUnavailable is returned, without touching the network, while the
// breaker is open. Callers treat it like any other Redis failure and take
// their fallback path; it exists so they can tell "we did not even try"
// apart in logs and metrics.
var ErrUnavailable = errors.New("redis unavailable (circuit open)")

// BreakerState is the state of the circuit breaker in front of Redis.
type BreakerState int32

// The breaker has no half-open state on the request path: while it is open,
// only the background reconnect loop probes Redis, so a flood of requests
// never piles onto a Redis that is restarting.
const (
	BreakerClosed BreakerState = iota
	BreakerOpen
)

func (s BreakerState) String() string {
	if s == BreakerOpen {
		return "open"
	}
	return "closed"
}

// Breaker counts consecutive connectivity failures and opens after
// Threshold of them. Only failures that say something about the connection
// count (timeouts, refused or reset connections, LOADING, pool exhaustion);
// a Redis error reply such as NOPERM or a script error is an answer, not an
// outage, and resets the count.
type Breaker struct {
	threshold int
	now       func() time.Time

	mu          sync.Mutex
	state       BreakerState
	consecutive int
	openedAt    time.Time
	onChange    func(from, to BreakerState, cause error)
}

// NewBreaker returns a closed breaker. now may be nil (time.Now).
func NewBreaker(threshold int, now func() time.Time) *Breaker {
	if threshold < 1 {
		threshold = 1
	}
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: threshold, now: now}
}

// OnChange registers the single transition callback. It is called outside
// the breaker's lock.
func (b *Breaker) OnChange(fn func(from, to BreakerState, cause error)) {
	b.mu.Lock()
	b.onChange = fn
	b.mu.Unlock()
}

// State reports the current state.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// OpenSince reports when the breaker opened (zero when closed).
func (b *Breaker) OpenSince() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != BreakerOpen {
		return time.Time{}
	}
	return b.openedAt
}

// Failing reports whether the last call failed for connectivity reasons
// (and none has succeeded since): Redis is suspect, though not yet
// declared down.
func (b *Breaker) Failing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.consecutive > 0
}

// Allow reports whether a call may go to Redis.
func (b *Breaker) Allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == BreakerClosed
}

// Record feeds the outcome of one call into the breaker.
func (b *Breaker) Record(err error) {
	if !IsConnectivityError(err) {
		b.mu.Lock()
		b.consecutive = 0
		b.mu.Unlock()
		return
	}
	b.mu.Lock()
	b.consecutive++
	if b.state == BreakerOpen || b.consecutive < b.threshold {
		b.mu.Unlock()
		return
	}
	b.state = BreakerOpen
	b.openedAt = b.now()
	cb := b.onChange
	b.mu.Unlock()
	if cb != nil {
		cb(BreakerClosed, BreakerOpen, err)
	}
}

// Trip opens the breaker at once, e.g. when the first connection at start-up
// fails: there is no point in letting requests find that out one by one.
func (b *Breaker) Trip(cause error) {
	b.mu.Lock()
	if b.state == BreakerOpen {
		b.mu.Unlock()
		return
	}
	b.state = BreakerOpen
	b.openedAt = b.now()
	b.consecutive = b.threshold
	cb := b.onChange
	b.mu.Unlock()
	if cb != nil {
		cb(BreakerClosed, BreakerOpen, cause)
	}
}

// Close closes the breaker after a successful probe.
func (b *Breaker) Close() {
	b.mu.Lock()
	if b.state == BreakerClosed {
		b.consecutive = 0
		b.mu.Unlock()
		return
	}
	b.state = BreakerClosed
	b.consecutive = 0
	cb := b.onChange
	b.mu.Unlock()
	if cb != nil {
		cb(BreakerOpen, BreakerClosed, nil)
	}
}

// IsConnectivityError reports whether err means Redis could not be reached
// or did not answer in time, as opposed to Redis answering with an error.
func IsConnectivityError(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		// A cancelled context is the client going away, not Redis.
		return false
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var redisErr redis.Error
	if errors.As(err, &redisErr) {
		msg := redisErr.Error()
		// These replies mean the node cannot serve us right now; a rejected
		// login (rotated password) makes Redis just as unusable as a dead one.
		for _, prefix := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOAUTH", "WRONGPASS"} {
			if strings.HasPrefix(msg, prefix) {
				return true
			}
		}
		return false
	}
	// Unknown errors from the dialer (DNS, TLS handshake) are connectivity.
	return strings.Contains(err.Error(), "dial") || strings.Contains(err.Error(), "tls:")
}
