package caddymodule

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ticketi/edge/ratelimit"
)

// TestRateLimitKeys: client IPs by prefix, and a template that does not
// resolve is a missing key (client IP or deny), never its literal text.
func TestRateLimitKeys(t *testing.T) {
	key := func(rl *RateLimit, rt tierRuntime, ip string, user string) string {
		r := httptest.NewRequest("GET", "/api/payments/x", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
		repl := caddyhttp.NewTestReplacer(r)
		if user != "" {
			repl.Set("http.auth.user.id", user)
		}
		rt.clientOnly = rt.key == clientIPPlaceholder
		rt.usesClient = true
		return rl.keyFor(&rt, r, repl)
	}
	rl := &RateLimit{}
	client := tierRuntime{key: clientIPPlaceholder}
	perUser := tierRuntime{key: "{http.auth.user.id}"}
	perUserDeny := tierRuntime{key: "{http.auth.user.id}", denyMissing: true}
	mixed := tierRuntime{key: "{http.vars.client_ip}:{http.auth.user.id}"}
	for _, c := range []struct {
		name     string
		rt       tierRuntime
		ip, user string
		want     string
	}{
		{"ipv4 as is", client, "203.0.113.9", "", "203.0.113.9"},
		{"ipv6 by /64", client, "2001:db8:1:2:3:4:5:6", "", "2001:db8:1:2::/64"},
		{"another address of the /64", client, "2001:db8:1:2::ffff", "", "2001:db8:1:2::/64"},
		{"user", perUser, "203.0.113.9", "17", "17"},
		{"anonymous on a per-user tier: client ip", perUser, "2001:db8:1:2::9", "", "ip:2001:db8:1:2::/64"},
		{"anonymous with deny", perUserDeny, "203.0.113.9", "", ""},
		{"partly unresolved", mixed, "203.0.113.9", "", "ip:203.0.113.9"},
		{"fully resolved", mixed, "2001:db8::1", "17", "2001:db8::/64:17"},
	} {
		if got := key(rl, c.rt, c.ip, c.user); got != c.want {
			t.Errorf("%s: key %q, want %q", c.name, got, c.want)
		}
	}
	wide := &RateLimit{prefixes: ratelimit.IPPrefixes{V4: 24, V6: 48}}
	if got := key(wide, client, "203.0.113.9", ""); got != "203.0.113.0/24" {
		t.Errorf("ipv4_prefix 24: %q", got)
	}
	if got := wide.adminKey("2001:db8:1:2::1"); got != "2001:db8:1::/48" {
		t.Errorf("admin key: %q", got)
	}
	if got := wide.adminKey("17"); got != "17" {
		t.Errorf("admin key for a user id: %q", got)
	}
}
