// Package ticketisim is an in-memory stand-in for the Ticketi Node/Express API.
//
// The edge (cache, rate limits, sessions) is tested, demonstrated and
// benchmarked against it, so it answers the same routes with the same
// response shapes, counts what reaches it per route (to prove cache hits never
// reach the origin), can be slowed down (to simulate MySQL) and can be made to
// fail (to exercise stale-on-error). Every instance owns its data; there is no
// package-level mutable state, so tests may run many in parallel.
package ticketisim

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

// DefaultLatency is the simulated database latency when Options leaves it unset:
// roughly one indexed MySQL query plus Express overhead.
const DefaultLatency = 20 * time.Millisecond

// Options configures a Sim.
type Options struct {
	// Latency is slept by every /api request, standing in for the database:
	// half before the handler reads or writes the data, half before the
	// answer leaves, so an answer can be older than a change committed
	// while it travels (as with a real database and network). Zero means
	// DefaultLatency unless Instant is set.
	Latency time.Duration
	// Instant answers without any simulated latency, for unit tests and for
	// benchmarks that measure the edge rather than the origin.
	Instant bool
	// Logf receives configuration changes; nil discards them.
	Logf func(format string, args ...any)
}

// Sim is the simulated Ticketi API. It is an http.Handler and safe for
// concurrent use.
type Sim struct {
	mux  *http.ServeMux
	data *store
	// counters is filled while routes are registered in New and only read
	// afterwards, so looking a counter up needs no lock.
	counters map[string]*atomic.Int64
	latency  atomic.Int64 // nanoseconds
	failing  atomic.Bool
	logf     func(string, ...any)
}

// New returns a Sim seeded with the deterministic demo data set.
func New(opts Options) *Sim {
	s := &Sim{
		mux:      http.NewServeMux(),
		data:     newStore(),
		counters: make(map[string]*atomic.Int64),
		logf:     opts.Logf,
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	switch {
	case opts.Instant:
		s.latency.Store(0)
	case opts.Latency <= 0:
		s.latency.Store(int64(DefaultLatency))
	default:
		s.latency.Store(int64(opts.Latency))
	}
	s.routes()
	return s
}

func (s *Sim) routes() {
	s.registerEventRoutes()
	s.registerUserRoutes()
	s.registerAuthRoutes()
	s.registerPaymentRoutes()
	s.registerDebugRoutes()
}

// api registers an origin route: counted, subject to failing mode and latency.
func (s *Sim) api(pattern string, h http.HandlerFunc) {
	c := new(atomic.Int64)
	s.counters[pattern] = c
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		c.Add(1)
		if s.failing.Load() {
			writeError(w, r, http.StatusServiceUnavailable, "service unavailable")
			return
		}
		latency := time.Duration(s.latency.Load())
		if !sleepCtx(r.Context(), latency/2) {
			// The client (or the edge) gave up; nobody is left to answer.
			return
		}
		if after := latency - latency/2; after > 0 {
			w = &lateWriter{ResponseWriter: w, ctx: r.Context(), delay: after}
		}
		h(w, r)
	})
}

// ServeHTTP routes the request. Unknown routes get JSON 404/405 bodies rather
// than ServeMux's plain text, because the edge relays them to API clients.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		s.unrouted(w, r, h)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Sim) unrouted(w http.ResponseWriter, r *http.Request, h http.Handler) {
	// ServeMux decides between 404, 405 and a path-cleaning redirect; ask it
	// without letting it write, then answer in JSON.
	rec := &probeWriter{header: make(http.Header)}
	h.ServeHTTP(rec, r)
	switch rec.status {
	case http.StatusNotFound:
		writeError(w, r, http.StatusNotFound, "not found")
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", rec.header.Get("Allow"))
		writeError(w, r, http.StatusMethodNotAllowed, "method not allowed")
	default:
		h.ServeHTTP(w, r)
	}
}

// Stats returns how many requests each /api route pattern has received since
// New or the last Reset, including routes never hit (count 0).
func (s *Sim) Stats() map[string]int64 {
	out := make(map[string]int64, len(s.counters))
	for p, c := range s.counters {
		out[p] = c.Load()
	}
	return out
}

// Reset zeroes the per-route counters; the data set is kept (see Reseed).
func (s *Sim) Reset() {
	for _, c := range s.counters {
		c.Store(0)
	}
}

// Reseed restores the initial data set, undoing every mutation, so a test can
// start from known ticket counts and follower graphs.
func (s *Sim) Reseed() {
	s.data.reseed()
	s.logf("ticketi-sim: data reseeded")
}

// SetLatency changes the simulated database latency; zero or less answers at once.
func (s *Sim) SetLatency(d time.Duration) {
	d = max(d, 0)
	s.latency.Store(int64(d))
	s.logf("ticketi-sim: latency set to %s", d)
}

// Latency reports the current simulated database latency.
func (s *Sim) Latency() time.Duration { return time.Duration(s.latency.Load()) }

// SetFailing makes every /api route answer 503, as if the database were down.
func (s *Sim) SetFailing(failing bool) {
	s.failing.Store(failing)
	s.logf("ticketi-sim: failing mode %t", failing)
}

// Failing reports whether failing mode is on.
func (s *Sim) Failing() bool { return s.failing.Load() }

// sleepCtx waits d or until ctx is done, reporting whether the full wait
// elapsed. A Timer rather than time.Sleep, so abandoned requests free their
// goroutine at once under load tests.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// lateWriter holds the answer back for the second half of the latency:
// the handler has read (or committed) the data, the answer is on its way.
type lateWriter struct {
	http.ResponseWriter
	ctx   context.Context
	delay time.Duration
	slept bool
}

func (l *lateWriter) wait() {
	if !l.slept {
		l.slept = true
		sleepCtx(l.ctx, l.delay)
	}
}

func (l *lateWriter) WriteHeader(code int) {
	l.wait()
	l.ResponseWriter.WriteHeader(code)
}

func (l *lateWriter) Write(b []byte) (int, error) {
	l.wait()
	return l.ResponseWriter.Write(b)
}

func (l *lateWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

// probeWriter records what ServeMux's fallback handlers would answer.
type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header { return p.header }

func (p *probeWriter) Write(b []byte) (int, error) {
	if p.status == 0 {
		p.status = http.StatusOK
	}
	return len(b), nil
}

func (p *probeWriter) WriteHeader(status int) {
	if p.status == 0 {
		p.status = status
	}
}
