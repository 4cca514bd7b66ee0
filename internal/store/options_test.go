package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestOptionsParseURLForms(t *testing.T) {
	cases := []struct {
		name     string
		opts     Options
		addrs    []string
		user, pw string
		db       int
		tls      bool
	}{
		{"bare host (seed REDIS_URL)", Options{URL: "redis-123.cloud.example"}, []string{"redis-123.cloud.example:6379"}, "", "", 0, false},
		{"host and port", Options{URL: "localhost:6380"}, []string{"localhost:6380"}, "", "", 0, false},
		{"full url", Options{URL: "redis://edge:s3cret@10.0.0.5:6390/2"}, []string{"10.0.0.5:6390"}, "edge", "s3cret", 2, false},
		{"tls url", Options{URL: "rediss://cache.example"}, []string{"cache.example:6379"}, "", "", 0, true},
		{"explicit password wins", Options{URL: "redis://:inurl@h:1", Password: "explicit"}, []string{"h:1"}, "", "explicit", 0, false},
		{"tls from options", Options{URL: "h:1", TLS: &TLSOptions{ServerName: "redis.internal"}}, []string{"h:1"}, "", "", 0, true},
		{"cluster seeds", Options{Addrs: []string{"a:1", "b:2", "c:3"}}, []string{"a:1", "b:2", "c:3"}, "", "", 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.setDefaults()
			u, err := tc.opts.universal()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(u.Addrs, ",") != strings.Join(tc.addrs, ",") {
				t.Errorf("addrs = %v, want %v", u.Addrs, tc.addrs)
			}
			if u.Username != tc.user || u.Password != tc.pw || u.DB != tc.db {
				t.Errorf("user/pw/db = %q/%q/%d, want %q/%q/%d", u.Username, u.Password, u.DB, tc.user, tc.pw, tc.db)
			}
			if (u.TLSConfig != nil) != tc.tls {
				t.Errorf("tls = %v, want %v", u.TLSConfig != nil, tc.tls)
			}
			if !u.ContextTimeoutEnabled {
				t.Error("context timeouts must be enabled so the budget applies")
			}
		})
	}
}

func TestOptionsErrorsNeverContainPassword(t *testing.T) {
	for _, raw := range []string{"http://u:hunter2@h:1", "redis://u:hunter2@h:1/notadb", "redis://u:hunter2@%zz"} {
		err := Options{URL: raw}.Validate()
		if err == nil {
			t.Fatalf("%q: expected an error", raw)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
	if err := (Options{}).Validate(); err == nil {
		t.Error("empty options must not validate")
	}
	if err := (Options{URL: "h", PoolSize: 5, MinIdle: 10}).Validate(); err == nil {
		t.Error("min_idle > pool_size must not validate")
	}
	if err := (Options{URL: "h", TLS: &TLSOptions{Cert: "x"}}).Validate(); err == nil {
		t.Error("a cert without a key must not validate")
	}
	red := Options{URL: "redis://u:hunter2@h:1"}.Redacted()
	if strings.Contains(red, "hunter2") || !strings.Contains(red, "h:1") {
		t.Errorf("Redacted() = %q", red)
	}
}

func TestKeyPatternHidesIdentifiers(t *testing.T) {
	cases := map[string]string{
		"event:42":                           "event:*",
		"events:location:lagos:page:3":       "events:location:lagos:page:*",
		"session:9f8e7d6c5b4a":               "session:*",
		"ratelimit:api:{203.0.113.9}":        "ratelimit:api:*",
		"sessions:user:17":                   "sessions:user:*",
		"events:featured":                    "events:featured",
		"a:b:c:d:e:f:g:h:i:j":                "a:b:c:d:e:f:g:h:…",
		"tag:user:profile:ABCDEFabcdef01234": "tag:user:profile:*",
		"":                                   "",
	}
	for in, want := range cases {
		if got := KeyPattern(in); got != want {
			t.Errorf("KeyPattern(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBreakerOpensOnConnectivityFailuresOnly(t *testing.T) {
	b := NewBreaker(3, nil)
	var transitions []BreakerState
	b.OnChange(func(_, to BreakerState, _ error) { transitions = append(transitions, to) })

	// Answers from Redis, even errors, do not count.
	for range 10 {
		b.Record(redis.Nil)
		b.Record(errors.New("NOPERM this user has no permissions"))
	}
	if !b.Allow() {
		t.Fatal("error replies must not open the breaker")
	}
	b.Record(ErrUnavailable)
	b.Record(ErrUnavailable)
	b.Record(nil) // a success resets the run
	b.Record(ErrUnavailable)
	b.Record(ErrUnavailable)
	if !b.Allow() {
		t.Fatal("breaker opened before 3 consecutive failures")
	}
	b.Record(ErrUnavailable)
	if b.Allow() || b.State() != BreakerOpen || b.OpenSince().IsZero() {
		t.Fatal("breaker should be open after 3 consecutive failures")
	}
	b.Record(ErrUnavailable) // no second transition
	b.Close()
	if !b.Allow() {
		t.Fatal("Close must close")
	}
	if len(transitions) != 2 || transitions[0] != BreakerOpen || transitions[1] != BreakerClosed {
		t.Fatalf("transitions = %v", transitions)
	}
}

func TestIsConnectivityError(t *testing.T) {
	yes := []error{ErrUnavailable, redis.ErrPoolTimeout, errors.New("dial tcp 127.0.0.1:1: connect: connection refused")}
	for _, err := range yes {
		if !IsConnectivityError(err) {
			t.Errorf("%v should count as connectivity", err)
		}
	}
	no := []error{nil, redis.Nil, errors.New("ERR wrong number of arguments")}
	for _, err := range no {
		if IsConnectivityError(err) {
			t.Errorf("%v should not count as connectivity", err)
		}
	}
}

func TestNextBackoffGrowsAndCaps(t *testing.T) {
	d := nextBackoff(0, DefaultMaxBackoff)
	if d < 40e6 || d > 60e6 {
		t.Fatalf("first backoff %v, want about 50ms", d)
	}
	for range 20 {
		d = nextBackoff(d, DefaultMaxBackoff)
	}
	if d > DefaultMaxBackoff+DefaultMaxBackoff/10 || d < DefaultMaxBackoff-DefaultMaxBackoff/10 {
		t.Fatalf("backoff %v not capped at about %v", d, DefaultMaxBackoff)
	}
}

type namedObserver struct{ name string }

func (namedObserver) RedisCall(string, time.Duration, error) {}
func (namedObserver) BreakerChanged(BreakerState)            {}
func (namedObserver) PoolObserved(PoolStats)                 {}

// A config reload installs a new observer on the shared connection. If the
// new config fails and is cleaned up, the running config's observer comes
// back; if the new config succeeds, the old config's cleanup changes nothing.
func TestObserverRestoreAcrossReloads(t *testing.T) {
	r, err := New(Options{URL: "127.0.0.1:1", DialTimeout: 10 * time.Millisecond, MaxBackoff: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	running, next := namedObserver{"running"}, namedObserver{"next"}
	restoreRunning := r.SetObserver(running)
	restoreNext := r.SetObserver(next)
	restoreNext() // the new config failed to load
	if got := r.obs(); got != Observer(running) {
		t.Fatalf("after a failed reload: %v", got)
	}
	restoreNext = r.SetObserver(next) // a reload that succeeds
	restoreRunning()                  // the old config is cleaned up
	if got := r.obs(); got != Observer(next) {
		t.Fatalf("after a successful reload: %v", got)
	}
	restoreNext()
	if got := r.obs(); got != Observer(running) {
		t.Fatalf("restore returns to what was installed before: %v", got)
	}
}
