package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	// The standard modules, so adapted configs can use reverse_proxy & co.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the adapt golden files in testdata/caddyfile")

// TestAdaptGolden adapts every testdata/caddyfile/*.caddyfile and compares
// the JSON with the .json golden beside it (go test -update rewrites them).
func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/caddyfile/*.caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	// The example config is adapted as a newcomer gets it: no environment.
	files = append(files, "../Caddyfile.example")
	for _, v := range []string{"EDGE_PORT", "TICKETI_UPSTREAM", "REDIS_URL", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS", "REDIS_KEY_PREFIX", "DEV_REDIS_DB", "EDGE_SESSION_KEYS"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			out, warnings, err := adapter.Adapt(src, map[string]any{"filename": file})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			if len(warnings) > 0 {
				t.Fatalf("adapt warnings: %v", warnings)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			golden := strings.TrimSuffix(file, ".caddyfile") + ".json"
			if filepath.Base(file) == "Caddyfile.example" {
				golden = "../testdata/caddyfile/Caddyfile.example.json"
			}
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Fatalf("adapt output differs from %s:\n%s", golden, pretty.String())
			}
		})
	}
}

func parseEdge(t *testing.T, src string) (*App, error) {
	t.Helper()
	d := caddyfile.NewTestDispenser(src)
	app := new(App)
	err := app.UnmarshalCaddyfile(d)
	return app, err
}

func TestEdgeOptionParses(t *testing.T) {
	app, err := parseEdge(t, `edge {
		redis redis://h:1/3
		cluster a:1 b:2
		username u
		password p
		tls on {
			ca /ca.pem
			insecure_skip_verify
		}
		key_prefix test_
		pool_size 7
		min_idle 2
		call_timeout 30ms
		breaker_failures 4
		heartbeat 1s
		slow_threshold 20ms
		fleet_flush 2s
	}`)
	if err != nil {
		t.Fatal(err)
	}
	rc := app.Redis
	if rc == nil || rc.URL != "redis://h:1/3" || !rc.Cluster || strings.Join(rc.Addresses, ",") != "a:1,b:2" ||
		rc.Username != "u" || rc.Password != "p" || rc.KeyPrefix != "test_" || rc.PoolSize != 7 || rc.MinIdle != 2 ||
		time.Duration(rc.CallTimeout) != 30*time.Millisecond || rc.BreakerFailures != 4 ||
		time.Duration(rc.Heartbeat) != time.Second || time.Duration(rc.SlowThreshold) != 20*time.Millisecond {
		t.Fatalf("parsed %+v", rc)
	}
	if rc.TLS == nil || rc.TLS.CA != "/ca.pem" || !rc.TLS.InsecureSkipVerify {
		t.Fatalf("tls %+v", rc.TLS)
	}
	if time.Duration(app.FleetFlushInterval) != 2*time.Second {
		t.Fatalf("fleet_flush %v", app.FleetFlushInterval)
	}
}

func TestEdgeOptionEmptyValuesMeanEmbedded(t *testing.T) {
	app, err := parseEdge(t, "edge {\n redis\n password\n tls off {\n ca /x\n }\n}")
	if err != nil {
		t.Fatal(err)
	}
	if app.Redis != nil {
		t.Fatalf("empty redis and tls off must leave no redis config, got %+v", app.Redis)
	}
	// Placeholders that expand to nothing at provision time also mean embedded.
	t.Setenv("TICKETI_TEST_EMPTY", "")
	_, configured, err := (&RedisConfig{URL: "{env.TICKETI_TEST_EMPTY}"}).storeOptions()
	if err != nil || configured {
		t.Fatalf("configured=%v err=%v", configured, err)
	}
	t.Setenv("TICKETI_TEST_URL", "redis://x:6379")
	opts, configured, err := (&RedisConfig{URL: "{env.TICKETI_TEST_URL}", KeyPrefix: "{env.TICKETI_TEST_EMPTY}dev_"}).storeOptions()
	if err != nil || !configured || opts.URL != "redis://x:6379" || opts.KeyPrefix != "dev_" {
		t.Fatalf("opts=%+v configured=%v err=%v", opts, configured, err)
	}
}

func TestEdgeOptionErrors(t *testing.T) {
	cases := map[string]string{
		"edge extra {\n}":                                  "wrong argument count",
		"edge {\n bogus 1\n}":                              "unrecognized edge option 'bogus'",
		"edge {\n pool_size many\n}":                       "pool_size: expected a non-negative whole number",
		"edge {\n call_timeout soon\n}":                    "call_timeout: expected a duration",
		"edge {\n tls maybe\n}":                            "tls: expected on or off",
		"edge {\n tls {\n ca\n }\n}":                       "wrong argument count",
		"edge {\n tls {\n pin abc\n }\n}":                  "unrecognized tls option 'pin'",
		"edge {\n sentinel onlyname\n}":                    "sentinel needs a master name",
		"edge {\n cluster\n}":                              "cluster needs at least one node address",
		"edge {\n db -1\n}":                                "db: expected a non-negative whole number",
		"edge {\n redis a b\n}":                            "wrong argument count",
		"edge {\n heartbeat 1s 2s\n}":                      "wrong argument count",
		"edge {\n breaker_failures -2\n}":                  "breaker_failures: expected a non-negative whole number",
		"edge {\n tls on off\n}":                           "wrong argument count",
		"edge {\n tls {\n insecure_skip_verify yes\n }\n}": "wrong argument count",
	}
	for src, want := range cases {
		_, err := parseEdge(t, src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want error containing %q", src, err, want)
		}
	}
}

func TestInvalidRedisConfigFailsProvisionWithoutLeakingPassword(t *testing.T) {
	app := &App{Redis: &RedisConfig{URL: "http://u:hunter2@h:1"}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	err := app.Provision(ctx)
	if err == nil {
		t.Fatal("an http:// URL must fail provisioning")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

func TestHealthOptionParses(t *testing.T) {
	h := new(Health)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("edge_health {\n down_after 30s\n}")); err != nil {
		t.Fatal(err)
	}
	if time.Duration(h.DownAfter) != 30*time.Second {
		t.Fatalf("down_after = %v", h.DownAfter)
	}
	for src, want := range map[string]string{
		"edge_health {\n down_after\n}":       "wrong argument count",
		"edge_health {\n later 1s\n}":         "unrecognized edge_health option",
		"edge_health {\n down_after never\n}": "expected a duration",
	} {
		err := new(Health).UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", src, err, want)
		}
	}
}
