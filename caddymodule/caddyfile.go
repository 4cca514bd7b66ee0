package caddymodule

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("edge", parseGlobalEdge)
	httpcaddyfile.RegisterHandlerDirective("edge_health", parseHealthCaddyfile)
	// RegisterDirectiveOrder only accepts a standard directive as anchor,
	// so each of ours hangs off a different one. Health runs early so that
	// nothing (auth, limits) stands between a load balancer and its check.
	httpcaddyfile.RegisterDirectiveOrder("edge_health", httpcaddyfile.Before, "basic_auth")
}

// parseGlobalEdge sets up the `edge` app from the global options block.
// Syntax:
//
//	edge {
//		redis            [<url>]          # redis://, rediss://, or host[:port]; empty → embedded
//		sentinel         <master_name> <address...>
//		cluster          <address...>
//		username         [<name>]
//		password         [<password>]
//		db               [<number>]
//		tls              [on|off] {
//			ca                   <file>
//			cert                 <file>
//			key                  <file>
//			server_name          <name>
//			insecure_skip_verify
//		}
//		key_prefix       [<prefix>]
//		pool_size        <n>
//		min_idle         <n>
//		dial_timeout     <duration>
//		read_timeout     <duration>
//		write_timeout    <duration>
//		call_timeout     <duration>
//		breaker_failures <n>
//		heartbeat        <duration>
//		slow_threshold   <duration>
//		fleet_flush      <duration>
//	}
//
// Options shown with [optional] values may be left empty so that an unset
// environment variable ({$REDIS_URL}) simply means "not set": an edge
// whose `redis` is empty runs on the embedded in-memory stores.
func parseGlobalEdge(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		// `edge` given twice: merge into the first.
		if prev, ok := existing.(httpcaddyfile.App); ok {
			if err := json.Unmarshal(prev.Value, app); err != nil {
				return nil, err
			}
		}
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "edge", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile parses the `edge` global option (see parseGlobalEdge).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	rc := a.Redis
	if rc == nil {
		rc = new(RedisConfig)
	}
	tlsOn := rc.TLS != nil
	err := parseBlock(d, "edge", func(opt string) error {
		var err error
		switch opt {
		case "redis":
			rc.URL, err = optionalArg(d)
		case "sentinel":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("sentinel needs a master name and at least one address")
			}
			rc.MasterName, rc.Addresses = args[0], append(rc.Addresses, args[1:]...)
		case "cluster":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("cluster needs at least one node address")
			}
			rc.Cluster, rc.Addresses = true, append(rc.Addresses, args...)
		case "username":
			rc.Username, err = optionalArg(d)
		case "password":
			rc.Password, err = optionalArg(d)
		case "key_prefix":
			rc.KeyPrefix, err = optionalArg(d)
		case "db":
			rc.DB, err = optionalInt(d, 0)
		case "pool_size":
			rc.PoolSize, err = requiredInt(d)
		case "min_idle":
			rc.MinIdle, err = requiredInt(d)
		case "breaker_failures":
			rc.BreakerFailures, err = requiredInt(d)
		case "dial_timeout":
			rc.DialTimeout, err = requiredDuration(d)
		case "read_timeout":
			rc.ReadTimeout, err = requiredDuration(d)
		case "write_timeout":
			rc.WriteTimeout, err = requiredDuration(d)
		case "call_timeout":
			rc.CallTimeout, err = requiredDuration(d)
		case "heartbeat":
			rc.Heartbeat, err = requiredDuration(d)
		case "slow_threshold":
			rc.SlowThreshold, err = requiredDuration(d)
		case "fleet_flush":
			a.FleetFlushInterval, err = requiredDuration(d)
		case "tls":
			tlsOn, err = parseRedisTLS(d, rc)
		default:
			return errUnknownOption
		}
		return err
	})
	if err != nil {
		return err
	}
	if !tlsOn {
		rc.TLS = nil
	}
	if !reflect.ValueOf(*rc).IsZero() {
		a.Redis = rc
	}
	return nil
}

// parseRedisTLS reads `tls [on|off] { ... }`. A block without a word
// means on; `tls off` (e.g. REDIS_TLS=false) turns it off even with a block.
func parseRedisTLS(d *caddyfile.Dispenser, rc *RedisConfig) (bool, error) {
	on := true
	if d.NextArg() {
		v, err := parseBoolWord(d.Val())
		if err != nil {
			return false, d.Errf("tls: expected on or off, got %q", d.Val())
		}
		on = v
		if d.NextArg() {
			return false, d.ArgErr()
		}
	}
	if rc.TLS == nil {
		rc.TLS = new(RedisTLS)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch sub := d.Val(); sub {
		case "ca":
			rc.TLS.CA, err = requiredArg(d)
		case "cert":
			rc.TLS.Cert, err = requiredArg(d)
		case "key":
			rc.TLS.Key, err = requiredArg(d)
		case "server_name":
			rc.TLS.ServerName, err = requiredArg(d)
		case "insecure_skip_verify":
			if d.NextArg() {
				return false, d.ArgErr()
			}
			rc.TLS.InsecureSkipVerify = true
		default:
			return false, d.Errf("unrecognized tls option '%s'", sub)
		}
		if err != nil {
			return false, err
		}
	}
	return on, nil
}

// parseHealthCaddyfile sets up the health handler. Syntax:
//
//	edge_health [<matcher>] {
//		down_after <duration>
//	}
//
// Typically: `edge_health /api/health/cache`.
func parseHealthCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return unmarshalHandler(h, new(Health))
}

// UnmarshalCaddyfile parses edge_health (see parseHealthCaddyfile).
func (h *Health) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseBlock(d, "edge_health", func(opt string) error {
		if opt != "down_after" {
			return errUnknownOption
		}
		v, err := requiredDuration(d)
		h.DownAfter = v
		return err
	})
}

// unmarshalHandler is every edge_* directive's setup: m reads the
// directive from h.
func unmarshalHandler(h httpcaddyfile.Helper, m interface {
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}) (caddyhttp.MiddlewareHandler, error) {
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// errUnknownOption is what a parseBlock option func returns for an option
// it does not know.
var errUnknownOption = errors.New("unknown option")

// parseBlock reads a directive (or global option) that takes no arguments,
// only a block: option is called with each option of the block, the
// dispenser on it, and returns errUnknownOption for one it does not know
// (reported as an unrecognized option of name).
func parseBlock(d *caddyfile.Dispenser, name string, option func(opt string) error) error {
	d.Next() // consume the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if err := option(opt); errors.Is(err, errUnknownOption) {
			return d.Errf("unrecognized %s option '%s'", name, opt)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// optionalArg returns the option's single argument, or "" when there is
// none (an empty environment variable).
func optionalArg(d *caddyfile.Dispenser) (string, error) {
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
		return "", nil
	case 1:
		return args[0], nil
	}
	return "", d.ArgErr()
}

func requiredArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

func optionalInt(d *caddyfile.Dispenser, def int) (int, error) {
	name := d.Val()
	s, err := optionalArg(d)
	if err != nil || strings.TrimSpace(s) == "" {
		return def, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, d.Errf("%s: expected a non-negative whole number, got %q", name, s)
	}
	return n, nil
}

func requiredInt(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	s, err := requiredArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, d.Errf("%s: expected a non-negative whole number, got %q", name, s)
	}
	return n, nil
}

func requiredDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	s, err := requiredArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, d.Errf("%s: expected a duration such as 50ms or 5s, got %q", name, s)
	}
	return caddy.Duration(dur), nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Health)(nil)
)

// parseCaddyDuration parses a Caddy duration (1m, 30s, 1d).
func parseCaddyDuration(s string) (caddy.Duration, error) {
	d, err := caddy.ParseDuration(s)
	return caddy.Duration(d), err
}

// requiredOnOff reads an on/off argument (also true/false, yes/no, 1/0).
func requiredOnOff(d *caddyfile.Dispenser) (bool, error) {
	name := d.Val()
	v, err := requiredArg(d)
	if err != nil {
		return false, err
	}
	on, err := parseBoolWord(v)
	if err != nil {
		return false, d.Errf("%s: expected on or off, got %q", name, v)
	}
	return on, nil
}

// redisOverride reads a handler's own `redis <url>`; an empty value (an
// unset variable) means the app's connection.
func redisOverride(d *caddyfile.Dispenser) (*RedisConfig, error) {
	url, err := optionalArg(d)
	if err != nil || url == "" {
		return nil, err
	}
	return &RedisConfig{URL: url}, nil
}

// parseBoolWord accepts the spellings operators put in environment
// variables (REDIS_TLS=true).
func parseBoolWord(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on", "yes", "1":
		return true, nil
	case "off", "no", "0", "":
		return false, nil
	}
	return strconv.ParseBool(s)
}
