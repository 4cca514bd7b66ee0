package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

func auditApp(t *testing.T, srv *redistest.Server) *App {
	t.Helper()
	app := &App{auditLog: new(auditTrail), log: zap.NewNop()}
	if srv != nil {
		r, err := store.New(store.Options{URL: srv.URL(), KeyPrefix: "audit_test_", CallTimeout: 50 * time.Millisecond}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Destruct() })
		app.redis = r
	}
	return app
}

func TestAuditTrailOnRedisIsCappedAndShared(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	app := auditApp(t, srv)
	trail := app.audit()
	trail.maxLen = 50
	for i := range 600 {
		trail.record(ctx, "admin", "cache_purge", map[string]string{"n": fmt.Sprint(i)})
	}
	raw := srv.Client(t)
	n := raw.XLen(ctx, "audit_test_audit:edge").Val()
	if n < 50 || n > 50+100 { // MAXLEN ~ trims whole stream nodes (100 entries each)
		t.Errorf("stream holds %d entries after 600 appends with a cap of ~50", n)
	}
	if ttl := raw.PTTL(ctx, "audit_test_audit:edge").Val(); ttl <= 0 {
		t.Errorf("stream has no TTL (%v)", ttl)
	}

	// Another edge on the same Redis reads the same trail, newest first.
	other := auditApp(t, srv)
	events, source, err := other.audit().recent(ctx, 3)
	if err != nil || source != "redis" || len(events) != 3 || events[0].Detail["n"] != "599" || events[2].Detail["n"] != "597" {
		t.Fatalf("recent from the other edge: %v %s %+v", err, source, events)
	}
	if events[0].Kind != "admin" || events[0].Action != "cache_purge" || events[0].Edge == "" || time.Since(events[0].Time) > time.Minute {
		t.Errorf("entry %+v", events[0])
	}

	// Redis gone: recording costs at most the call budget and the trail
	// falls back to this edge's ring.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	trail.record(ctx, "admin", "ratelimit_reset", map[string]string{"tier": "api"})
	if d := time.Since(start); d > time.Second {
		t.Errorf("record with Redis stopped took %v", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for app.redis.Available() && time.Now().Before(deadline) {
		trail.record(ctx, "admin", "ratelimit_reset", map[string]string{"tier": "api"})
	}
	events, source, err = trail.recent(ctx, 1)
	if err != nil || source != "memory" || len(events) != 1 || events[0].Action != "ratelimit_reset" {
		t.Fatalf("recent with Redis down: %v %s %+v", err, source, events)
	}
}

func TestAuditRingOnEmbeddedDefault(t *testing.T) {
	ctx := context.Background()
	trail := auditApp(t, nil).audit()
	if events, source, err := trail.recent(ctx, 10); err != nil || source != "memory" || len(events) != 0 || events == nil {
		t.Fatalf("empty trail: %v %s %#v", err, source, events)
	}
	for i := range auditRingLen + 200 {
		trail.record(ctx, "admin", "cache_purge", map[string]string{"n": fmt.Sprint(i)})
	}
	events, _, _ := trail.recent(ctx, auditReadMax)
	if len(events) != auditRingLen || events[0].Detail["n"] != fmt.Sprint(auditRingLen+199) || events[len(events)-1].Detail["n"] != "200" {
		t.Fatalf("ring after %d entries: %d kept, newest %v, oldest %v", auditRingLen+200, len(events), events[0].Detail, events[len(events)-1].Detail)
	}
}

func TestAuditEntriesAreBounded(t *testing.T) {
	detail := map[string]string{}
	for i := range 20 {
		detail[fmt.Sprint("field", i)] = strings.Repeat("é", 500)
	}
	got := boundDetail(detail)
	if len(got) != auditMaxFields {
		t.Errorf("%d fields kept", len(got))
	}
	for _, v := range got {
		if len(v) > auditMaxValueBytes+len("…") || !strings.HasSuffix(v, "…") || !json.Valid([]byte(`"`+v+`"`)) {
			t.Errorf("value %q not cut cleanly", v)
		}
	}
}

// The limiter's abuse line lands in the trail; other lines do not.
func TestAbuseSignalGoesToTheTrail(t *testing.T) {
	app := auditApp(t, nil)
	log := app.auditAbuse(zap.NewNop()).With(zap.String("module", "x"))
	log.Info("something else", zap.String("tier", "api"))
	log.Info(abuseMessage, zap.String("tier", "auth"), zap.String("key", "h:0011223344556677"), zap.Int64("denied", 11), zap.Int64("limit", 10), zap.String("source", "redis"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		events, _, _ := app.audit().recent(context.Background(), 10)
		if len(events) == 1 {
			e := events[0]
			if e.Kind != "abuse" || e.Action != "rate_limited" || e.Detail["tier"] != "auth" || e.Detail["key"] != "h:0011223344556677" || e.Detail["denied"] != "11" || e.Detail["limit"] != "10" {
				t.Fatalf("abuse entry %+v", e)
			}
			return
		}
		if len(events) > 1 || time.Now().After(deadline) {
			t.Fatalf("trail %+v", events)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
