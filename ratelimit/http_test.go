package ratelimit

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandlerDecidesMatchingTiers drives the HTTP entry point: only the
// tiers whose matcher takes the request are decided, an allowed request
// reaches next with the RateLimit fields, a refused one gets a 429 problem
// that is never cached and does not reach next, and a missing key denies.
func TestHandlerDecidesMatchingTiers(t *testing.T) {
	clock := newClock()
	l := newLimiter(t, Options{Now: clock.Now})
	auth := authTier() // 10 a minute
	login := func(r *http.Request) bool { return r.URL.Path == "/api/auth/login" }
	h, err := NewHandler(l, HTTPOptions{Tiers: []HTTPTier{
		{Tier: apiTier(), Key: func(r *http.Request) string { return r.Header.Get("X-Client") }},
		{Tier: auth, Match: login, Key: func(r *http.Request) string { return r.Header.Get("X-Client") }},
	}, Exempt: func(r *http.Request) bool { return r.Header.Get("X-Internal") != "" }})
	if err != nil {
		t.Fatal(err)
	}
	reached := 0
	next := NextFunc(func(w http.ResponseWriter, r *http.Request) error { reached++; return nil })
	serve := func(path, client string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, nil)
		r.Header.Set("X-Client", client)
		w := httptest.NewRecorder()
		if err := h.Handle(w, r, next); err != nil {
			t.Fatal(err)
		}
		return w
	}

	w := serve("/api/events", "a")
	if reached != 1 || !strings.Contains(w.Header().Get(HeaderPolicy), `"api"`) || strings.Contains(w.Header().Get(HeaderPolicy), `"auth"`) {
		t.Fatalf("events: reached %d, policy %q", reached, w.Header().Get(HeaderPolicy))
	}
	for range 10 {
		serve("/api/auth/login", "a")
	}
	w = serve("/api/auth/login", "a")
	if w.Code != http.StatusTooManyRequests || reached != 11 {
		t.Fatalf("11th login: %d, reached %d", w.Code, reached)
	}
	if w.Header().Get("Content-Type") != ProblemContentType || w.Header().Get("Cache-Control") != "no-store" || w.Header().Get(HeaderRetryAfter) == "" {
		t.Fatalf("429 headers: %v", w.Header())
	}
	var p problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Tier != "auth" || p.Detail != auth.Message {
		t.Fatalf("problem %s: %v", w.Body, err)
	}
	if w := serve("/api/events", "a"); w.Code != http.StatusOK || reached != 12 {
		t.Fatalf("the api tier alone still allows a: %d", w.Code)
	}
	if w := serve("/api/events", ""); w.Code != http.StatusTooManyRequests || reached != 12 {
		t.Fatalf("a missing key: %d", w.Code)
	}
	r := httptest.NewRequest(http.MethodPost, "/api/auth/login", nil)
	r.Header.Set("X-Client", "a")
	r.Header.Set("X-Internal", "1")
	w = httptest.NewRecorder()
	if err := h.Handle(w, r, next); err != nil || w.Code != http.StatusOK || reached != 13 || w.Header().Get(HeaderPolicy) != "" {
		t.Fatalf("an exempt request: %d, reached %d, %v", w.Code, reached, w.Header())
	}
}

func TestNewHandlerRefusesBadTiers(t *testing.T) {
	l := newLimiter(t, Options{})
	key := func(*http.Request) string { return "k" }
	for name, tiers := range map[string][]HTTPTier{
		"invalid tier": {{Tier: &Tier{Name: "a b", Limit: 1, Window: 1}, Key: key}},
		"no key":       {{Tier: apiTier()}},
	} {
		if _, err := NewHandler(l, HTTPOptions{Tiers: tiers}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := NewHandler(nil, HTTPOptions{}); err == nil {
		t.Error("nil Limiter accepted")
	}
}
