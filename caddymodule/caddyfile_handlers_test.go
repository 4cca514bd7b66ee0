package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ticketi/edge/internal/redistest"
)

func TestRateLimitDirectiveParses(t *testing.T) {
	rl := new(RateLimit)
	err := rl.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`edge_rate_limit {
		tier api 100 1m {
			match_path /api/*
			message "Too many requests"
		}
		tier payment 5 1m {
			match_path /api/payments/*
			match_method POST
			key {http.auth.user.id}
			missing_key deny
			algorithm gcra
		}
		dry_run
		penalty 2 max 10m memory 1h
		local_deny off
		leases off
		key_display truncate
		hash_salt fleet-salt
		top_k 50
		redis redis://limits:6379
		ipv4_prefix 24
		ipv6_prefix 56
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(rl.Tiers) != 2 || rl.Tiers[0].Limit != 100 || time.Duration(rl.Tiers[0].Window) != time.Minute ||
		rl.Tiers[0].Message != "Too many requests" || rl.Tiers[1].Key != "{http.auth.user.id}" ||
		rl.Tiers[1].MissingKey != "deny" || rl.Tiers[1].Methods[0] != "POST" || rl.Tiers[1].Algorithm != "gcra" || rl.Tiers[0].Algorithm != "" {
		t.Fatalf("tiers %+v", rl.Tiers)
	}
	if !rl.DryRun || rl.Penalty.Factor != 2 || time.Duration(rl.Penalty.Max) != 10*time.Minute ||
		time.Duration(rl.Penalty.Memory) != time.Hour || !rl.DisableLocalDeny || rl.KeyDisplay != "truncate" ||
		rl.HashSalt != "fleet-salt" || rl.TopK != 50 || rl.Redis == nil || rl.Redis.URL != "redis://limits:6379" ||
		rl.IPv4Prefix != 24 || rl.IPv6Prefix != 56 || !rl.DisableLeases {
		t.Fatalf("options %+v", rl)
	}
	for src, want := range map[string]string{
		"edge_rate_limit {\n tier api 100\n}":                           "needs a name, a limit and a window",
		"edge_rate_limit {\n tier api many 1m\n}":                       "limit must be a positive whole number",
		"edge_rate_limit {\n tier api 0 1m\n}":                          "limit must be a positive whole number",
		"edge_rate_limit {\n tier api 10 soon\n}":                       "window must be a duration",
		"edge_rate_limit {\n tier api 10 1m {\n missing_key ask\n }\n}": "expected client_ip or deny",
		"edge_rate_limit {\n tier api 10 1m {\n match_path api\n }\n}":  "is not a path",
		"edge_rate_limit {\n penalty 1\n}":                              "greater than 1",
		"edge_rate_limit {\n ipv6_prefix 129\n}":                        "expected 1 to 128 bits",
		"edge_rate_limit {\n ipv4_prefix 0\n}":                          "expected 1 to 32 bits",
		"edge_rate_limit {\n tier api 10 1m {\n algorithm leaky\n }\n}": "expected window or gcra",
		"edge_rate_limit {\n penalty 2 max\n}":                          "expected: penalty",
		"edge_rate_limit {\n penalty 2 forever 1m\n}":                   "unknown option",
		"edge_rate_limit {\n key_display plain\n}":                      "expected hash or truncate",
		"edge_rate_limit {\n colour red\n}":                             "unrecognized edge_rate_limit option",
	} {
		err := new(RateLimit).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
	if err := (&RateLimit{}).Validate(); err == nil {
		t.Error("a limiter without tiers must not validate")
	}
}

func TestSessionDirectiveParses(t *testing.T) {
	s := new(Session)
	err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`edge_session {
		signing_keys new-key-0123456789abcdefghijklmnopqrstu old-key-0123456789abcdefghijklmnopqrstu
		storage_key base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
		cookie_name sid
		cookie_path /api
		cookie_domain ticketi.example
		same_site strict
		insecure_cookie
		idle_timeout 12h
		absolute_timeout 72h
		touch_interval 30s
		local_ttl 5s
		outage_grace 2m
		login /api/auth/login /api/auth/register
		logout /api/auth/logout
		identity_header X-Login
		user_headers X-Uid X-Uname X-Verified
		protect /api/payments/* /api/users/me
		protect_mutations except /api/auth/login
		login_redirect /login
		express {
			secrets one two
			cookie_name legacy.sid
			prefix app:sess:
			redis redis://node-sessions:6379
		}
		redis redis://sessions:6379
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.SigningKeys) != 2 || s.CookieName != "sid" || s.SameSite != "strict" || !s.InsecureCookie ||
		time.Duration(s.IdleTimeout) != 12*time.Hour || time.Duration(s.TouchInterval) != 30*time.Second ||
		len(s.LoginPaths) != 2 || s.UserIDHeader != "X-Uid" || len(s.Protect) != 2 || !s.ProtectMutations ||
		s.MutationsExcept[0] != "/api/auth/login" || s.LoginRedirect != "/login" || s.Express == nil ||
		len(s.Express.Secrets) != 2 || s.Express.Prefix != "app:sess:" ||
		s.Express.Redis == nil || s.Express.Redis.URL != "redis://node-sessions:6379" || s.Redis.URL != "redis://sessions:6379" {
		t.Fatalf("parsed %+v", s)
	}
	key, err := decodeKey(s.StorageKey)
	if err != nil || len(key) != 32 || key[31] != 31 {
		t.Fatalf("base64 key: %v %v", key, err)
	}
	for src, want := range map[string]string{
		"edge_session {\n user_headers a b\n}":          "needs three names",
		"edge_session {\n protect_mutations only /x\n}": "expected: protect_mutations",
		"edge_session {\n protect api\n}":               "is not a path",
		"edge_session {\n express {\n salt x\n }\n}":    "unrecognized express option",
		"edge_session {\n cookie_name\n}":               "wrong argument count",
		"edge_session {\n remember_me\n}":               "unrecognized edge_session option",
	} {
		err := new(Session).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
	if _, err := decodeKey("base64:!!"); err == nil {
		t.Error("bad base64 key accepted")
	}
	if err := (&Session{LoginRedirect: "http://evil.example"}).Validate(); err == nil {
		t.Error("a plain-http login redirect must not validate")
	}
}

func TestSessionNeedsKeysWithRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	src := "{\n\tadmin off\n\tedge {\n\t\tredis " + srv.URL() + "\n\t}\n}\n\nhttp://127.0.0.1:0 {\n\tedge_session\n}\n"
	err := loadCaddyfile(src)
	if err == nil || !strings.Contains(err.Error(), "signing_keys are required with redis") {
		t.Fatalf("edge_session with redis and no keys: %v", err)
	}
}
