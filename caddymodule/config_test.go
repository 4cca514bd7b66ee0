package caddymodule

import (
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ticketi/edge/cachehandler"
	"github.com/ticketi/edge/ratelimit"
	"github.com/ticketi/edge/sessionauth"
)

// The cache's default credential cookies name edge_session's default
// cookie: the two engines keep the name apart, this keeps them in step.
func TestCacheCredentialCookiesIncludeTheSessionCookie(t *testing.T) {
	if !slices.Contains(cachehandler.DefaultCredentialCookies, sessionauth.DefaultCookieName) {
		t.Fatalf("%v lacks %q", cachehandler.DefaultCredentialCookies, sessionauth.DefaultCookieName)
	}
}

// One penalty-factor rule, one message, wherever the factor comes from:
// the Caddyfile, a JSON config with a penalty block, the engine's options.
func TestPenaltyFactorIsCheckedByTheEngine(t *testing.T) {
	want := ratelimit.Penalty{Factor: 1}.ValidateFactor().Error()
	want = want[:strings.Index(want, ", got")]
	for _, f := range []string{"1", "0.5", "-2", "1001", "NaN"} {
		err := new(RateLimit).UnmarshalCaddyfile(caddyfile.NewTestDispenser("edge_rate_limit {\n penalty " + f + "\n}"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Caddyfile penalty %s: %v", f, err)
		}
	}
	tiers := []RateLimitTier{{Name: "api", Limit: 1, Window: 1}}
	if err := (&RateLimit{Tiers: tiers, Penalty: &RateLimitPenalty{}}).Validate(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a penalty block without a factor: %v", err)
	}
	if err := (&RateLimit{Tiers: tiers, Penalty: &RateLimitPenalty{Factor: 2}}).Validate(); err != nil {
		t.Errorf("factor 2: %v", err)
	}
	if _, err := ratelimit.New(ratelimit.Options{Penalty: ratelimit.Penalty{Factor: 1}}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("engine factor 1: %v", err)
	}
}

// Validate refuses, with the engines' rules, what the handlers refused
// before the checks moved into the engines.
func TestHandlersValidateWithTheEnginesRules(t *testing.T) {
	rule := []CacheRule{{Name: "e", Path: "/e/{id}", Key: "e:{id}", TTL: 60e9}}
	for name, c := range map[string]*Cache{
		"negative l1_size":   {Rules: rule, L1Size: -1},
		"negative max entry": {Rules: rule, MaxEntrySize: -1},
		"negative compress":  {Rules: rule, CompressMin: -1},
		"nothing to do":      {},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("edge_cache %s: accepted", name)
		}
	}
	if err := (&Cache{Rules: rule}).Validate(); err != nil {
		t.Errorf("edge_cache with one rule: %v", err)
	}
	for name, s := range map[string]*Session{
		"same_site":      {SameSite: "sometimes"},
		"login_redirect": {LoginRedirect: "ftp://x"},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("edge_session %s: accepted", name)
		}
	}
	for _, s := range []*Session{{}, {SameSite: "Strict", LoginRedirect: "/login"}} {
		if err := s.Validate(); err != nil {
			t.Errorf("edge_session %+v: %v", s, err)
		}
	}
}
