package caddymodule

import (
	"strconv"
	"strings"
	"unicode"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_cache", parseCacheCaddyfile)
	// Inside encode: a stored gzip body passes through Caddy's encoder
	// untouched instead of being recompressed on every hit; and before
	// handle/route blocks, so it works wherever reverse_proxy sits.
	httpcaddyfile.RegisterDirectiveOrder("edge_cache", httpcaddyfile.After, "encode")
}

// parseCacheCaddyfile sets up the cache handler. Syntax:
//
//	edge_cache [<matcher>] {
//		rule <name> <path> {
//			key          <template>
//			ttl          <duration>
//			tags         <template...>
//			per_user
//			public
//			ignore_query <name...>
//			enabled      on|off
//			stale_while_revalidate <duration>
//			vary         <header> <value...>  # map the header to one value, the first the default; repeatable per header
//		}
//		invalidate [soft] <METHOD[,METHOD...]> <path> <tag...>  # soft: mark stale, refresh once
//		rfc9111 [<path pattern...>] {    # standards mode for paths no rule matches
//			max_ttl      <duration>       # default 1h
//			heuristic    <percent>|off    # default 10
//			max_variants <n>              # default 8
//		}
//		l1_size            <size>        # e.g. 64MiB
//		l1_ttl             <duration>
//		max_entry          <size>        # e.g. 1MiB
//		grace              <duration>|off
//		stale_while_revalidate <duration>  # rules' default, at most grace
//		compress_min       <size>
//		negative_ttl       <duration>
//		status_name        <name>
//		invalidate_header  <header>
//		credential_cookies <name...>
//		identity_headers   <header...>
//		case_sensitive_routing           # as Express's "case sensitive routing"
//		strict_routing                   # as Express's "strict routing"
//		upstream_host      fixed|client  # default client: keys include the host
//	}
func parseCacheCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return unmarshalHandler(h, new(Cache))
}

// UnmarshalCaddyfile parses edge_cache (see parseCacheCaddyfile).
func (c *Cache) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseBlock(d, "edge_cache", func(opt string) error {
		var err error
		switch opt {
		case "rule":
			err = c.parseRule(d)
		case "rfc9111":
			err = c.parseRFC9111(d)
		case "invalidate":
			args := d.RemainingArgs()
			soft := len(args) > 0 && args[0] == "soft"
			if soft {
				args = args[1:]
			}
			if len(args) < 3 {
				return d.Errf("invalidate needs [soft], methods, a path and at least one tag")
			}
			c.Invalidations = append(c.Invalidations, CacheInvalidation{
				Methods: strings.Split(strings.ToUpper(args[0]), ","), Path: args[1], Tags: args[2:], Soft: soft,
			})
		case "l1_size":
			var n int
			n, err = requiredSize(d)
			c.L1Size = int64(n)
		case "l1_ttl":
			c.L1TTL, err = requiredDuration(d)
		case "max_entry":
			c.MaxEntrySize, err = requiredSize(d)
		case "grace":
			if d.NextArg() && d.Val() == "off" {
				c.DisableStale = true
				if d.NextArg() {
					return d.ArgErr()
				}
				break
			}
			d.Prev()
			c.Grace, err = requiredDuration(d)
		case "compress_min":
			c.CompressMin, err = requiredSize(d)
		case "stale_while_revalidate":
			c.StaleWhileRevalidate, err = requiredDuration(d)
		case "negative_ttl":
			c.NegativeTTL, err = requiredDuration(d)
		case "status_name":
			c.StatusName, err = requiredArg(d)
		case "invalidate_header":
			c.InvalidateHeader, err = requiredArg(d)
		case "credential_cookies":
			c.CredentialCookies = d.RemainingArgs()
			if len(c.CredentialCookies) == 0 {
				return d.ArgErr()
			}
		case "identity_headers":
			c.IdentityHeaders = d.RemainingArgs()
			if len(c.IdentityHeaders) == 0 {
				return d.ArgErr()
			}
		case "case_sensitive_routing":
			c.CaseSensitiveRouting, err = flagOption(d)
		case "strict_routing":
			c.StrictRouting, err = flagOption(d)
		case "upstream_host":
			var v string
			if v, err = requiredArg(d); err == nil {
				switch v {
				case "fixed":
					c.FixedUpstreamHost = true
				case "client":
					c.FixedUpstreamHost = false
				default:
					return d.Errf("upstream_host: expected fixed or client, got %q", v)
				}
			}
		default:
			return errUnknownOption
		}
		return err
	})
}

func (c *Cache) parseRule(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("rule needs a name and a path pattern, e.g. rule event /api/events/{id}")
	}
	r := CacheRule{Name: args[0], Path: args[1]}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch sub := d.Val(); sub {
		case "key":
			r.Key, err = requiredArg(d)
		case "ttl":
			r.TTL, err = requiredDuration(d)
		case "tags":
			if r.Tags = d.RemainingArgs(); len(r.Tags) == 0 {
				return d.ArgErr()
			}
		case "per_user":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.PerUser = true
		case "public":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.Public = true
		case "ignore_query":
			if r.IgnoreQuery = d.RemainingArgs(); len(r.IgnoreQuery) == 0 {
				return d.ArgErr()
			}
		case "enabled":
			var on bool
			on, err = requiredOnOff(d)
			r.Disabled = !on
		case "stale_while_revalidate":
			r.StaleWhileRevalidate, err = requiredDuration(d)
		case "vary":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("vary needs a header and at least one value, e.g. vary Accept-Language en fr de")
			}
			r.Vary = append(r.Vary, CacheVary{Header: args[0], Values: args[1:]})
		default:
			return d.Errf("unrecognized rule option '%s'", sub)
		}
		if err != nil {
			return err
		}
	}
	if r.Key == "" || r.TTL == 0 {
		return d.Errf("rule %s needs a key and a ttl", r.Name)
	}
	c.Rules = append(c.Rules, r)
	return nil
}

// flagOption reads an option that takes no arguments.
func flagOption(d *caddyfile.Dispenser) (bool, error) {
	if d.NextArg() {
		return false, d.ArgErr()
	}
	return true, nil
}

// requiredSize parses sizes like 1024, 64KiB, 64MiB, 1MB.
func requiredSize(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	s, err := requiredArg(d)
	if err != nil {
		return 0, err
	}
	n, ok := parseSize(s)
	if !ok {
		return 0, d.Errf("%s: expected a size such as 512KiB or 64MiB, got %q", name, s)
	}
	return n, nil
}

func parseSize(s string) (int, bool) {
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) })
	if i == 0 {
		return 0, false
	}
	num, unit := s, ""
	if i > 0 {
		num, unit = s[:i], strings.ToLower(s[i:])
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return 0, false
	}
	mult := map[string]int{"": 1, "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000 * 1000, "mib": 1 << 20, "gb": 1000 * 1000 * 1000, "gib": 1 << 30}[unit]
	if mult == 0 || n > (1<<40)/mult {
		return 0, false
	}
	return n * mult, true
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Cache)(nil)
