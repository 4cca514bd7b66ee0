package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_rate_limit", parseRateLimitCaddyfile)
	// After edge_session (after basic_auth), so a per-user tier sees the
	// user; before the cache, so cache hits are limited too.
	httpcaddyfile.RegisterDirectiveOrder("edge_rate_limit", httpcaddyfile.After, "forward_auth")
}

// parseRateLimitCaddyfile sets up the limiter. Syntax:
//
//	edge_rate_limit [<matcher>] {
//		tier <name> <limit> <window> {
//			match_path   <path...>
//			match_method <method...>
//			key          <placeholder template>    # default {http.vars.client_ip}
//			message      <text>
//			missing_key  client_ip|deny
//			algorithm    window|gcra                # default window
//		}
//		dry_run
//		penalty     <factor> [max <duration>] [memory <duration>]
//		local_deny  on|off
//		leases      on|off                         # default on
//		key_display hash|truncate
//		hash_salt   <salt>
//		top_k       <n>
//		redis       <url>                          # a separate Redis for limiter state
//		ipv4_prefix <bits>                         # default 32
//		ipv6_prefix <bits>                         # default 64
//	}
func parseRateLimitCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return unmarshalHandler(h, new(RateLimit))
}

// UnmarshalCaddyfile parses edge_rate_limit (see parseRateLimitCaddyfile).
func (rl *RateLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseBlock(d, "edge_rate_limit", func(opt string) error {
		var err error
		switch opt {
		case "tier":
			err = rl.parseTier(d)
		case "dry_run":
			if d.NextArg() {
				return d.ArgErr()
			}
			rl.DryRun = true
		case "penalty":
			err = rl.parsePenalty(d)
		case "local_deny":
			var on bool
			on, err = requiredOnOff(d)
			rl.DisableLocalDeny = !on
		case "leases":
			var on bool
			on, err = requiredOnOff(d)
			rl.DisableLeases = !on
		case "key_display":
			if rl.KeyDisplay, err = requiredArg(d); err == nil && rl.KeyDisplay != "hash" && rl.KeyDisplay != "truncate" {
				return d.Errf("key_display: expected hash or truncate, got %q", rl.KeyDisplay)
			}
		case "hash_salt":
			rl.HashSalt, err = optionalArg(d)
		case "top_k":
			rl.TopK, err = requiredInt(d)
		case "redis":
			rl.Redis, err = redisOverride(d)
		case "ipv4_prefix", "ipv6_prefix":
			var bits int
			if bits, err = requiredInt(d); err == nil {
				full := map[string]int{"ipv4_prefix": 32, "ipv6_prefix": 128}[opt]
				if bits < 1 || bits > full {
					return d.Errf("%s: expected 1 to %d bits, got %d", opt, full, bits)
				}
				if opt == "ipv4_prefix" {
					rl.IPv4Prefix = bits
				} else {
					rl.IPv6Prefix = bits
				}
			}
		default:
			return errUnknownOption
		}
		return err
	})
}

func (rl *RateLimit) parseTier(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 3 {
		return d.Errf("tier needs a name, a limit and a window, e.g. tier api 100 1m")
	}
	limit, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || limit < 1 {
		return d.Errf("tier %s: limit must be a positive whole number, got %q", args[0], args[1])
	}
	window, err := parseCaddyDuration(args[2])
	if err != nil || window <= 0 {
		return d.Errf("tier %s: window must be a duration such as 1m, got %q", args[0], args[2])
	}
	t := RateLimitTier{Name: args[0], Limit: limit, Window: window}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "match_path":
			if t.Paths, err = pathArgs(d); err != nil {
				return err
			}
		case "match_method":
			if t.Methods = d.RemainingArgs(); len(t.Methods) == 0 {
				return d.ArgErr()
			}
		case "key":
			if t.Key, err = requiredArg(d); err != nil {
				return err
			}
		case "message":
			if t.Message, err = requiredArg(d); err != nil {
				return err
			}
		case "algorithm":
			if t.Algorithm, err = requiredArg(d); err != nil {
				return err
			}
			if t.Algorithm != "window" && t.Algorithm != "gcra" {
				return d.Errf("algorithm: expected window or gcra, got %q", t.Algorithm)
			}
		case "missing_key":
			if t.MissingKey, err = requiredArg(d); err != nil {
				return err
			}
			if t.MissingKey != "client_ip" && t.MissingKey != "deny" {
				return d.Errf("missing_key: expected client_ip or deny, got %q", t.MissingKey)
			}
		default:
			return d.Errf("unrecognized tier option '%s'", sub)
		}
	}
	rl.Tiers = append(rl.Tiers, t)
	return nil
}

func (rl *RateLimit) parsePenalty(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args)%2 != 1 {
		return d.Errf("expected: penalty <factor> [max <duration>] [memory <duration>]")
	}
	factor, err := strconv.ParseFloat(args[0], 64)
	if err != nil {
		return d.Errf("penalty factor must be a number, got %q", args[0])
	}
	p := &RateLimitPenalty{Factor: factor}
	if err := p.engine().ValidateFactor(); err != nil {
		return d.Err(err.Error())
	}
	for i := 1; i < len(args); i += 2 {
		dur, err := parseCaddyDuration(args[i+1])
		if err != nil || dur <= 0 {
			return d.Errf("penalty %s: expected a duration, got %q", args[i], args[i+1])
		}
		switch strings.ToLower(args[i]) {
		case "max":
			p.Max = dur
		case "memory":
			p.Memory = dur
		default:
			return d.Errf("penalty: unknown option %q", args[i])
		}
	}
	rl.Penalty = p
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*RateLimit)(nil)
