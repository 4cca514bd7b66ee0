package caddymodule

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ticketi/edge/cachehandler"
)

// CacheRFC9111 is the standards mode: paths no rule matches are cached as
// RFC 9111 defines a shared cache (the origin's CDN-Cache-Control,
// Surrogate-Control, Cache-Control, Expires, Vary, validators).
type CacheRFC9111 struct {
	// Path patterns the mode applies to; empty: every path no rule matches.
	Paths []string `json:"paths,omitempty"`
	// Cap on the freshness an origin may ask for. Default: 1h.
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`
	// Share of the Last-Modified age used as freshness when a response
	// states none (RFC 9111 §4.2.2), in percent. Default: 10.
	Heuristic int `json:"heuristic,omitempty"`
	// Turns heuristic freshness off.
	HeuristicOff bool `json:"heuristic_off,omitempty"`
	// Variants (Vary) kept per URL. Default: 8.
	MaxVariants int `json:"max_variants,omitempty"`
}

// engine converts the module config for the cache engine.
func (s *CacheRFC9111) engine() *cachehandler.Standard {
	if s == nil {
		return nil
	}
	st := &cachehandler.Standard{Paths: append([]string(nil), s.Paths...), MaxTTL: time.Duration(s.MaxTTL),
		HeuristicPercent: s.Heuristic, MaxVariants: s.MaxVariants}
	if s.HeuristicOff {
		st.HeuristicPercent = -1
	}
	return st
}

// parseRFC9111 reads
//
//	rfc9111 [<path pattern...>] {
//		max_ttl      <duration>
//		heuristic    <percent>|off
//		max_variants <n>
//	}
func (c *Cache) parseRFC9111(d *caddyfile.Dispenser) error {
	if c.RFC9111 != nil {
		return d.Err("rfc9111 given twice")
	}
	s := &CacheRFC9111{Paths: d.RemainingArgs()}
	for _, p := range s.Paths {
		if !strings.HasPrefix(p, "/") {
			return d.Errf("rfc9111: path pattern %q must start with /", p)
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "max_ttl":
			s.MaxTTL, err = requiredDuration(d)
			if err == nil && s.MaxTTL == 0 {
				err = d.Err("rfc9111: max_ttl must be positive")
			}
		case "heuristic":
			var v string
			if v, err = requiredArg(d); err == nil {
				if v == "off" {
					s.HeuristicOff = true
					break
				}
				n, perr := strconv.Atoi(strings.TrimSuffix(v, "%"))
				if perr != nil || n < 0 || n > 100 {
					return d.Errf("rfc9111: heuristic: expected a percentage from 0 to 100 or off, got %q", v)
				}
				if n == 0 {
					s.HeuristicOff = true
				}
				s.Heuristic = n
			}
		case "max_variants":
			var v string
			if v, err = requiredArg(d); err == nil {
				n, perr := strconv.Atoi(v)
				if perr != nil || n < 1 || n > 64 {
					return d.Errf("rfc9111: max_variants: expected 1 to 64, got %q", v)
				}
				s.MaxVariants = n
			}
		default:
			return d.Errf("unrecognized rfc9111 option '%s'", opt)
		}
		if err != nil {
			return err
		}
	}
	c.RFC9111 = s
	return nil
}
