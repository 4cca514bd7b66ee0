package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/cachehandler"
)

type entryAnswer struct {
	Key    string                            `json:"key"`
	Caches map[string]cachehandler.EntryInfo `json:"caches"`
}

func (e *testEdge) entry(t *testing.T, method, path, body string) (int, entryAnswer, string) {
	t.Helper()
	code, raw := e.admin(t, method, path, body)
	var a entryAnswer
	if code == 200 {
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatalf("%s %s: %s: %v", method, path, raw, err)
		}
	}
	return code, a, string(raw)
}

// The entry route on Caddyfile.example with Redis: what L1 and Redis hold,
// a TTL change (audited, key hashed), clear errors, and with Redis down
// what L1 has (never a 500).
func TestCacheEntryRouteOnRedis(t *testing.T) {
	e, srv := startExampleEdgeOnRedis(t)
	e.get(t, "/api/events/42")
	e.get(t, "/api/events/42")
	code, a, raw := e.entry(t, http.MethodGet, "/edge/cache/entry?key=event:42", "")
	info := a.Caches["cache"]
	if code != 200 || info.Rule != "event" || info.Redis != "ok" || info.L1 == nil || info.L2 == nil ||
		info.L2.State != "fresh" || !info.L2.Servable || info.L2.TTLSeconds != 1800 || strings.Join(info.L2.Tags, ",") != "event:42" {
		t.Fatalf("GET entry: %d %s", code, raw)
	}
	code, a, raw = e.entry(t, http.MethodPost, "/edge/cache/entry", `{"key":"event:42","ttl":"30s"}`)
	if info := a.Caches["cache"]; code != 200 || info.L2 == nil || info.L2.RemainingSeconds > 30 || info.L2.RemainingSeconds < 29 {
		t.Fatalf("POST entry ttl 30s: %d %s", code, raw)
	}
	rdb := srv.Client(t)
	if pttl := rdb.PTTL(t.Context(), "test_event:42").Val(); pttl > 30*time.Second+cachehandler.DefaultGrace || pttl <= 0 {
		t.Errorf("redis PTTL after a 30s TTL: %v", pttl)
	}
	// PATCH works too; the audit trail has both changes, with the key hashed.
	if code, _, raw := e.entry(t, http.MethodPatch, "/edge/cache/entry", `{"key":"event:42","ttl":"1m"}`); code != 200 {
		t.Fatalf("PATCH entry: %d %s", code, raw)
	}
	_, audit := e.admin(t, http.MethodGet, "/edge/audit", "")
	if strings.Count(string(audit), `"action":"cache_ttl"`) != 2 || strings.Contains(string(audit), "event:42") || !strings.Contains(string(audit), `"ttl":"1m0s"`) {
		t.Errorf("audit trail: %s", audit)
	}

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{http.MethodGet, "/edge/cache/entry", "", 400, "is required"},
		{http.MethodGet, "/edge/cache/entry?key=sess:abc", "", 400, "not a key any cache rule writes"},
		{http.MethodGet, "/edge/cache/entry?key=event:43", "", 404, "not stored"},
		{http.MethodGet, "/edge/cache/entry?key=event:42&cache=nope", "", 404, `no edge_cache handler named \"nope\"`},
		{http.MethodPost, "/edge/cache/entry", `{"key":"event:43","ttl":"30s"}`, 404, "not stored"},
		{http.MethodPost, "/edge/cache/entry", `{"key":"event:42"}`, 400, "must be a duration"},
		{http.MethodPost, "/edge/cache/entry", `{"key":"event:42","ttl":"30d"}`, 400, "ttl must be 1s to"},
		{http.MethodPost, "/edge/cache/entry", `{"key":"event:42","ttl":"30s","x":1}`, 400, "unknown field"},
		{http.MethodDelete, "/edge/cache/entry?key=event:42", "", 405, "not allowed"},
	} {
		if code, raw := e.admin(t, tc.method, tc.path, tc.body); code != tc.code || !strings.Contains(string(raw), tc.want) {
			t.Errorf("%s %s %s: %d %s, want %d %q", tc.method, tc.path, tc.body, code, raw, tc.code, tc.want)
		}
	}

	checkEntryAges(t, e, "/api/events/9", "event:9")

	// Redis down: the route shows what L1 has and says Redis is unreachable.
	e.get(t, "/api/events/7")
	e.get(t, "/api/events/7")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	var last string
	poll(t, 5*time.Second, "entry route reporting redis unreachable", func() bool {
		code, a, raw := e.entry(t, http.MethodGet, "/edge/cache/entry?key=event:7", "")
		last = raw
		info := a.Caches["cache"]
		return code == 200 && info.Redis == "unreachable" && info.RedisError != "" && info.L1 != nil && info.L2 == nil
	})
	t.Logf("with redis down: %s", last)
	if code, raw := e.admin(t, http.MethodPost, "/edge/cache/entry", `{"key":"event:7","ttl":"30s"}`); code != http.StatusServiceUnavailable || !strings.Contains(string(raw), "redis is unreachable") {
		t.Errorf("POST with redis down: %d %s", code, raw)
	}
}

// On the embedded default the entry lives in L1 only.
func TestCacheEntryRouteEmbedded(t *testing.T) {
	e := startExampleEdge(t, map[string]string{"TICKETI_UPSTREAM": startSim(t), "REDIS_URL": ""})
	e.get(t, "/api/events/42")
	code, a, raw := e.entry(t, http.MethodGet, "/edge/cache/entry?key=event:42", "")
	if info := a.Caches["cache"]; code != 200 || info.Redis != "none" || info.L1 == nil || info.L2 != nil || info.L1.State != "fresh" {
		t.Fatalf("GET entry: %d %s", code, raw)
	}
	code, a, raw = e.entry(t, http.MethodPost, "/edge/cache/entry", `{"key":"event:42","ttl":"2h"}`)
	if info := a.Caches["cache"]; code != 200 || info.L1 == nil || info.L1.RemainingSeconds < 7199 {
		t.Fatalf("POST entry ttl 2h: %d %s", code, raw)
	}
	if _, h, _ := e.get(t, "/api/events/42"); h.Get("Cache-Status") != "ticketi-edge; hit" {
		t.Errorf("after the TTL change: %q", h.Get("Cache-Status"))
	}
	checkEntryAges(t, e, "/api/events/9", "event:9")
}

// checkEntryAges fills path, invalidates tag through the admin API and
// expects the entry's age in the TTL advice and in the age metric.
func checkEntryAges(t *testing.T, e *testEdge, path, tag string) {
	t.Helper()
	e.get(t, path)
	if code, body := e.admin(t, http.MethodPost, "/edge/cache/purge", `{"tag":"`+tag+`"}`); code != 200 || !strings.Contains(string(body), `"purged":1`) {
		t.Fatalf("purge tag %s: %d %s", tag, code, body)
	}
	var stats map[string]struct {
		TTLAdvice map[string]cachehandler.TTLAdvice `json:"ttl_advice"`
	}
	_, body := e.admin(t, http.MethodGet, "/edge/cache/stats", "")
	if err := json.Unmarshal(body, &stats); err != nil {
		t.Fatal(err)
	}
	if ages := stats["cache"].TTLAdvice["event"].EntryAges; ages == nil || ages.Measured != 1 || ages.Buckets[0].Count != 1 {
		t.Errorf("entry ages after invalidating a fresh entry: %+v", ages)
	}
	_, metrics := e.admin(t, http.MethodGet, "/metrics", "")
	if !strings.Contains(string(metrics), `ticketi_edge_cache_invalidated_entry_age_ttl_ratio_bucket{rule="event",le="0.05"} 1`) {
		t.Errorf("age metric:\n%s", grepLines(string(metrics), "invalidated_entry_age"))
	}
}

// With two edge_cache handlers (one per route, each its own rules), a key
// is inspected and its TTL set in the handler whose rules write it; the
// other handler's "not a key any of my rules writes" is not the answer.
func TestCacheEntryRouteWithTwoCaches(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok " + r.URL.Path))
	}))
	t.Cleanup(up.Close)
	proxy := strings.TrimPrefix(up.URL, "http://")
	site := ""
	for _, n := range []string{"a", "b"} {
		site += fmt.Sprintf("route /%[1]s/* {\n\tedge_cache {\n\t\trule %[1]s /%[1]s/{id} {\n\t\t\tkey %[1]s:{id}\n\t\t\tttl 1m\n\t\t}\n\t\tupstream_host fixed\n\t}\n\treverse_proxy %[2]s\n}\n", n, proxy)
	}
	e := startEdge(t, "", site)
	for _, n := range []string{"a", "b"} {
		e.get(t, "/"+n+"/1")
		code, a, raw := e.entry(t, http.MethodGet, "/edge/cache/entry?key="+n+":1", "")
		if code != 200 || len(a.Caches) == 0 {
			t.Errorf("GET entry %s:1: %d %s", n, code, raw)
			continue
		}
		for name, info := range a.Caches {
			if info.Stored() && info.Rule != n {
				t.Errorf("GET entry %s:1: cache %s says rule %q", n, name, info.Rule)
			}
		}
		if code, _, raw := e.entry(t, http.MethodPost, "/edge/cache/entry", `{"key":"`+n+`:1","ttl":"30s"}`); code != 200 {
			t.Errorf("POST entry %s:1: %d %s", n, code, raw)
		}
	}
	if code, raw := e.admin(t, http.MethodGet, "/edge/cache/entry?key=c:1", ""); code != 400 || !strings.Contains(string(raw), "not a key any cache rule writes") {
		t.Errorf("a key no handler's rules write: %d %s", code, raw)
	}
}
