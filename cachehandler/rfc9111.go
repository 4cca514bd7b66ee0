package cachehandler

import (
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file holds the standards mode's parsing and arithmetic: directives
// (RFC 9111 §5.2, RFC 9213 targeted fields), freshness lifetime (§4.2.1),
// heuristics (§4.2.2) and age (§4.2.3). The serving side is in
// rfc9111_serve.go.

// Standard configures the RFC 9111 mode for paths no rule matches.
type Standard struct {
	// Paths limits the mode to these patterns (rule syntax); empty means
	// every path no rule matches.
	Paths []string
	// MaxTTL caps the freshness an origin may ask for. Zero: DefaultMaxTTL.
	MaxTTL time.Duration
	// HeuristicPercent is the share of the Last-Modified age used as
	// freshness when a response has none (§4.2.2); negative turns
	// heuristics off. Zero means DefaultHeuristicPercent; set -1 for off.
	HeuristicPercent int
	// MaxVariants bounds the variants (Vary) kept per URL. Zero: 8.
	MaxVariants int

	paths []pattern
}

// Standards-mode defaults.
const (
	DefaultMaxTTL           = time.Hour
	DefaultHeuristicPercent = 10
	defaultMaxVariants      = 8
	// maxDeltaSeconds is 2^31, the value §1.2.2 says to use for any
	// delta-seconds that overflows.
	maxDeltaSeconds = 1 << 31
)

// directives is one parsed Cache-Control (or targeted) field: lower-case
// names, values unquoted; the first occurrence of a name wins.
type directives map[string]string

func (d directives) has(name string) bool { _, ok := d[name]; return ok }

// seconds returns a delta-seconds directive's value. A value that is not
// all digits is invalid (ok false); an overflow is capped at 2^31.
func (d directives) seconds(name string) (int64, bool) {
	v, ok := d[name]
	if !ok {
		return 0, false
	}
	return parseDeltaSeconds(v)
}

func parseDeltaSeconds(v string) (int64, bool) {
	if v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxDeltaSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, maxDeltaSeconds), true
}

// maxDirectives bounds how many directives one field may carry; the rest
// are ignored (a hostile origin or client cannot make parsing expensive).
const maxDirectives = 32

// parseDirectives parses every line of a Cache-Control-like field,
// honouring quoted strings (a comma or "max-age=" inside quotes is not a
// directive). A directive with whitespace around "=" is malformed and
// ignored.
func parseDirectives(lines []string) directives {
	if len(lines) == 0 {
		return nil
	}
	d := directives{}
	for _, line := range lines {
		for line != "" && len(d) < maxDirectives {
			var item string
			item, line = cutDirective(line)
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			name, value, hasValue := strings.Cut(item, "=")
			if hasValue && (strings.TrimRight(name, " \t") != name || strings.TrimLeft(value, " \t") != value) {
				continue
			}
			name = strings.ToLower(name)
			if !validToken(name) {
				continue
			}
			if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
				value = strings.ReplaceAll(value[1:len(value)-1], `\`, "")
			} else if strings.ContainsAny(value, "\"' \t") {
				value = "\x00invalid" // a value no parser accepts: the directive counts as present but unusable
			}
			if _, seen := d[name]; !seen {
				d[name] = value
			}
		}
	}
	return d
}

// cutDirective splits at the first comma outside a quoted string.
func cutDirective(s string) (string, string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				return s[:i], s[i+1:]
			}
		}
	}
	return s, ""
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// responsePolicy is what the standards mode reads from a response's
// headers once, when it arrives.
type responsePolicy struct {
	cc directives // Cache-Control
	// targeted is CDN-Cache-Control or Surrogate-Control (RFC 9213): when
	// present it replaces Cache-Control for this cache's freshness.
	targeted directives
}

func policyOf(h http.Header) responsePolicy {
	p := responsePolicy{cc: parseDirectives(h["Cache-Control"])}
	if d, ok := parseTargeted(h["Cdn-Cache-Control"]); ok {
		p.targeted = d
	} else if d, ok := parseTargeted(h["Surrogate-Control"]); ok {
		p.targeted = d
	}
	return p
}

// parseTargeted parses a targeted cache-control field (RFC 9213 §2.1): a
// Structured Fields dictionary. A field that is not a valid dictionary,
// or whose max-age is not an integer, is ignored as a whole, and
// Cache-Control applies instead.
func parseTargeted(lines []string) (directives, bool) {
	if len(lines) == 0 {
		return nil, false
	}
	d := directives{}
	for _, line := range lines {
		for _, member := range strings.Split(line, ",") {
			member = strings.Trim(member, " \t")
			if member == "" {
				return nil, false
			}
			item, _, _ := strings.Cut(member, ";") // parameters are allowed and ignored
			key, value, hasValue := strings.Cut(item, "=")
			if !sfKey(key) || (hasValue && !sfBareItem(value)) {
				return nil, false
			}
			if key == "max-age" && hasValue {
				if _, ok := parseDeltaSeconds(value); !ok {
					return nil, false
				}
			}
			if len(d) < maxDirectives {
				if _, seen := d[key]; !seen {
					d[key] = value
				}
			}
		}
	}
	return d, true
}

func sfKey(k string) bool {
	if k == "" || !(k[0] == '*' || (k[0] >= 'a' && k[0] <= 'z')) {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("_-.*", c) >= 0) {
			return false
		}
	}
	return true
}

// sfBareItem accepts integers, decimals, strings, tokens, byte sequences
// and booleans (RFC 8941 §3.3), loosely.
func sfBareItem(v string) bool {
	switch {
	case v == "":
		return false
	case v == "?0" || v == "?1":
		return true
	case v[0] == '"':
		return len(v) >= 2 && v[len(v)-1] == '"'
	case v[0] == ':':
		return len(v) >= 2 && v[len(v)-1] == ':'
	case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
		_, err := strconv.ParseFloat(v, 64)
		return err == nil
	case v[0] == '*' || (v[0]|0x20 >= 'a' && v[0]|0x20 <= 'z'):
		for i := 1; i < len(v); i++ {
			if v[i] <= ' ' || v[i] >= 0x7f || strings.IndexByte(`"(),;<=>?@[\]{}`, v[i]) >= 0 {
				return false
			}
		}
		return true
	}
	return false
}

// control is the field that governs this cache: the targeted one when the
// origin sent one (RFC 9213 §2.1), else Cache-Control.
func (p responsePolicy) control() directives {
	if p.targeted != nil {
		return p.targeted
	}
	return p.cc
}

// noStore: the response must not be stored (§5.2.2.5, §5.2.2.7: private
// is no-store for a shared cache).
func (p responsePolicy) noStore() bool {
	d := p.control()
	return d.has("no-store") || d.has("private")
}

// noCache: stored, but every use needs revalidation (§5.2.2.4).
func (p responsePolicy) noCache() bool {
	return p.control().has("no-cache")
}

// mustRevalidate: never served stale (§5.2.2.2, §5.2.2.8, and s-maxage
// implies proxy-revalidate for a shared cache, §5.2.2.10).
func (p responsePolicy) mustRevalidate() bool {
	d := p.control()
	return d.has("must-revalidate") || d.has("proxy-revalidate") || d.has("s-maxage")
}

// explicitLifetime returns the freshness the origin set (§4.2.1) and
// whether it set one: the targeted field's max-age, then s-maxage,
// max-age, then Expires - Date. An invalid Expires means already expired.
func (p responsePolicy) explicitLifetime(h http.Header, date time.Time) (time.Duration, bool) {
	if p.targeted != nil {
		if s, ok := p.targeted.seconds("max-age"); ok {
			return time.Duration(s) * time.Second, true
		}
	}
	if _, present := p.cc["s-maxage"]; present {
		s, _ := p.cc.seconds("s-maxage")
		return time.Duration(s) * time.Second, true
	}
	if _, present := p.cc["max-age"]; present {
		s, _ := p.cc.seconds("max-age") // an invalid max-age means stale (§4.2.1)
		return time.Duration(s) * time.Second, true
	}
	if lines := h["Expires"]; len(lines) > 0 {
		if len(lines) != 1 {
			return 0, true
		}
		exp, err := parseHTTPDate(lines[0])
		if err != nil {
			return 0, true
		}
		return max(exp.Sub(date), 0), true
	}
	return 0, false
}

// parseHTTPDate accepts the three formats of RFC 9110 §5.6.7, in any
// letter case for names ("wrong case" is still unambiguous).
// Anything else (other zones, two-digit years in IMF-fixdate, missing
// comma, extra spaces, one-digit hours) is invalid.
func parseHTTPDate(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	switch {
	case imfFixdate.MatchString(v):
		return time.Parse(http.TimeFormat, v[:len(v)-3]+"GMT")
	case rfc850Date.MatchString(v):
		return time.Parse(time.RFC850, v[:len(v)-3]+"GMT")
	case asctimeDate.MatchString(v):
		return time.Parse(time.ANSIC, v)
	}
	return time.Time{}, errInvalidDate
}

var errInvalidDate = errors.New("invalid HTTP date")

// The three date grammars of RFC 9110 §5.6.7 (compiled once, read-only).
var (
	imfFixdate  = regexp.MustCompile(`^[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} (?i:GMT)$`)
	rfc850Date  = regexp.MustCompile(`^[A-Za-z]{6,9}, [0-9]{2}-[A-Za-z]{3}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} (?i:GMT)$`)
	asctimeDate = regexp.MustCompile(`^[A-Za-z]{3} [A-Za-z]{3} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}$`)
)

// heuristicallyCacheable are the statuses §4.2.2 lets a cache give
// heuristic freshness to (RFC 9110 §15.1).
var heuristicallyCacheable = map[int]bool{200: true, 203: true, 204: true, 206: true, 300: true, 301: true,
	308: true, 404: true, 405: true, 410: true, 414: true, 501: true}

// understoodStatus are final statuses whose semantics the cache knows
// well enough to store a response with explicit freshness (§3 "the
// response status code is final and understood").
func understoodStatus(code int) bool {
	switch {
	case code >= 200 && code <= 208 && code != 206:
		return true
	case code >= 300 && code <= 308 && code != 304 && code != 305 && code != 306:
		return true
	case code >= 400 && code <= 431 && code != 407:
		return true
	case code >= 500 && code <= 511:
		return true
	}
	return false
}

// freshness computes the lifetime of a response under the mode's
// heuristic (the max_ttl cap applies to what is left of it, see derive); ok false means the response has none and no heuristic
// applies (it may still be stored to be revalidated, if it has a
// validator).
func (s *Standard) freshness(p responsePolicy, code int, h http.Header, date time.Time) (time.Duration, bool) {
	if life, ok := p.explicitLifetime(h, date); ok {
		return life, true
	}
	if s.HeuristicPercent <= 0 {
		return 0, false
	}
	if !heuristicallyCacheable[code] && !p.cc.has("public") {
		return 0, false
	}
	lm, err := parseHTTPDate(h.Get("Last-Modified"))
	if err != nil || !lm.Before(date) {
		return 0, false
	}
	return date.Sub(lm) * time.Duration(s.HeuristicPercent) / 100, true
}

// ageValue parses the Age header (§5.1): the first line's first member,
// digits only, else ignored.
func ageValue(h http.Header) time.Duration {
	lines := h["Age"]
	if len(lines) == 0 {
		return 0
	}
	first, _, _ := strings.Cut(lines[0], ",")
	n, ok := parseDeltaSeconds(strings.TrimSpace(first))
	if !ok {
		return 0
	}
	return time.Duration(n) * time.Second
}

// initialAge is corrected_initial_age of §4.2.3.
func initialAge(h http.Header, date, requestTime, responseTime time.Time) time.Duration {
	apparent := max(responseTime.Sub(date), 0)
	corrected := ageValue(h) + max(responseTime.Sub(requestTime), 0)
	return max(apparent, corrected)
}

// dateOf returns the response's Date, or the response time when it has
// none or an invalid one (§4.2.3: a cache assumes it was generated then).
func dateOf(h http.Header, responseTime time.Time) time.Time {
	if d, err := parseHTTPDate(h.Get("Date")); err == nil && len(h["Date"]) == 1 {
		return d
	}
	return responseTime
}

// requestPolicy is what a client's Cache-Control asks for (§5.2.1).
type requestPolicy struct {
	noCache, noStore, onlyIfCached bool
	maxAge, minFresh, maxStale     time.Duration
	hasMaxAge, hasMinFresh         bool
	hasMaxStale                    bool
}

func requestPolicyOf(h http.Header) requestPolicy {
	d := parseDirectives(h["Cache-Control"])
	var p requestPolicy
	p.noCache = d.has("no-cache") || (len(h["Cache-Control"]) == 0 && pragmaNoCache(h))
	p.noStore = d.has("no-store")
	p.onlyIfCached = d.has("only-if-cached")
	if s, ok := d.seconds("max-age"); ok {
		p.maxAge, p.hasMaxAge = time.Duration(s)*time.Second, true
	}
	if s, ok := d.seconds("min-fresh"); ok {
		p.minFresh, p.hasMinFresh = time.Duration(s)*time.Second, true
	}
	if v, ok := d["max-stale"]; ok {
		p.hasMaxStale = true
		p.maxStale = maxDeltaSeconds * time.Second // no value: any staleness
		if v != "" {
			if s, ok := parseDeltaSeconds(v); ok {
				p.maxStale = time.Duration(s) * time.Second
			} else {
				p.hasMaxStale = false
			}
		}
	}
	return p
}

func pragmaNoCache(h http.Header) bool {
	for _, v := range h["Pragma"] {
		if hasDirective(v, "no-cache") {
			return true
		}
	}
	return false
}

// formatAge renders an age for the Age header, capped at 2^31 (§5.1).
func formatAge(d time.Duration) string {
	s := int64(d / time.Second)
	if s < 0 {
		s = 0
	}
	return strconv.FormatInt(min(s, maxDeltaSeconds), 10)
}
