package cachehandler

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ticketi/edge/internal/store"
)

// Limits on what a request can put into a key: a key is built from the
// URL, so its size must not be the client's choice.
const (
	maxParamLen = 128
	maxKeyLen   = 512
	maxTagLen   = 256
	// A rule's name is in its rule tag, edge:rule:<name>.
	maxRuleNameLen = 128
)

// reservedKeyPrefixes are key spaces other parts of the edge own; a cache
// rule writing into them could overwrite sessions or limiter state.
var reservedKeyPrefixes = store.ReservedKeyPrefixes()

// Resolver resolves a placeholder that is neither a path parameter nor a
// query value, e.g. "http.auth.user.id", for one request. The Caddy glue
// backs it with the request's replacer; bare net/http users may leave it nil.
type Resolver func(r *http.Request, name string) (string, bool)

// Rule caches the responses of one route.
type Rule struct {
	// Name is the rule's metric label (bounded: it comes from config).
	Name string
	// Path is a pattern such as /api/events/{id}; {name} matches one
	// non-empty segment, a trailing {name...} matches the rest.
	Path string
	// Key is the cache key template, e.g. "events:location:{location}:page:{query.page:1}".
	Key string
	// TTL is how long an entry is fresh.
	TTL time.Duration
	// Tags are templates like Key; invalidating a tag drops its entries.
	Tags []string
	// PerUser marks a rule whose key includes the user (e.g.
	// {http.auth.user.id}), so credentialed requests may use it.
	PerUser bool
	// Public declares that the response is the same for every user, so
	// requests with credentials or a session may be served from, and fill,
	// the shared entry. Only for routes whose upstream never personalises
	// the answer; responses with Set-Cookie or Cache-Control: private are
	// still never stored.
	Public bool
	// Disabled is the seed's per-endpoint feature flag.
	Disabled bool
	// IgnoreQuery lists query parameters that do not change the response
	// (e.g. utm_source). Any other parameter not used in Key bypasses the
	// cache, so a cache-buster or an unknown filter never gets someone
	// else's response.
	IgnoreQuery []string
	// StaleWhileRevalidate: for this long after expiry the stored entry is
	// served at once while one background fill refreshes it. Zero: the
	// handler's Config.StaleWhileRevalidate.
	StaleWhileRevalidate time.Duration
	// Vary maps request headers to a few canonical values before the
	// lookup and the fill (varycanon.go), so the rule has at most that
	// many variants for each whatever clients send.
	Vary []VaryCanon

	vary  []varyCanon
	path  pattern
	key   template
	tags  []template
	query map[string]bool // query names used by Key
}

// InvalidationRule drops tags when a mutating request succeeds.
type InvalidationRule struct {
	// Methods: POST, PUT, PATCH, DELETE (one or more).
	Methods []string
	// Path pattern, as in Rule.
	Path string
	// Tags to drop, templates over the path parameters.
	Tags []string
	// Soft marks the tags' entries stale instead of dropping them
	// (softpurge.go): readers get the old answer, marked stale, while one
	// refresh runs, so the writer may not read its own write at once. A tag
	// that another (hard) rule or the upstream's header also names for the
	// same request is dropped hard.
	Soft bool

	path pattern
	tags []template
}

// PathMatching says how request paths are compared with rule and
// invalidation patterns. The zero value is Express's default routing, the
// Ticketi server's: literal segments in any case, and one optional trailing
// slash (/api/events/42/ is /api/events/42). Set the fields the way the
// upstream app sets Express's "case sensitive routing" and "strict routing",
// so that every path variant the upstream routes to a handler reaches the
// same rule with the same parameters: a variant then can neither make a
// second entry nor escape an invalidation.
//
// Everything else follows Express too (see testdata/express-routing):
// literal segments are compared as sent, still percent-encoded (Express 404s
// /api/%65vents/42, so the edge does not match it either), parameters are
// percent-decoded (/api/events/%34%32 is event 42) and keep their case,
// empty segments (//, /api/events//42, a second trailing slash) match
// nothing.
type PathMatching struct {
	// CaseSensitive compares literal segments byte for byte.
	CaseSensitive bool
	// Strict makes a trailing slash significant: /a/ does not match /a.
	Strict bool
}

func (r *Rule) compile(m PathMatching) error {
	if r.Name == "" {
		return errors.New("cache rule needs a name")
	}
	if r.TTL <= 0 {
		return fmt.Errorf("cache rule %q: ttl must be positive", r.Name)
	}
	var err error
	if r.path, err = compilePattern(r.Path, m); err != nil {
		return fmt.Errorf("cache rule %q: %w", r.Name, err)
	}
	if r.key, err = compileTemplate(r.Key, r.path); err != nil {
		return fmt.Errorf("cache rule %q: key: %w", r.Name, err)
	}
	if strings.IndexByte(r.Key, hostSeparator) >= 0 {
		return fmt.Errorf("cache rule %q: key %q: '#' starts the host part the edge adds", r.Name, r.Key)
	}
	for _, p := range reservedKeyPrefixes {
		if strings.HasPrefix(r.Key, p) {
			return fmt.Errorf("cache rule %q: key %q is in the reserved %q space", r.Name, r.Key, p)
		}
	}
	if len(r.Name) > maxRuleNameLen {
		return fmt.Errorf("cache rule %q: name longer than %d bytes", r.Name[:maxRuleNameLen], maxRuleNameLen)
	}
	if len(r.Tags) > maxTagCount-1 {
		return fmt.Errorf("cache rule %q: at most %d tags", r.Name, maxTagCount-1)
	}
	r.tags = r.tags[:0]
	for _, t := range r.Tags {
		if strings.HasPrefix(t, store.EdgeTagPrefix) {
			return fmt.Errorf("cache rule %q: tag %q: edge: tags are the edge's own", r.Name, t)
		}
		tt, err := compileTemplate(t, r.path)
		if err != nil {
			return fmt.Errorf("cache rule %q: tag: %w", r.Name, err)
		}
		r.tags = append(r.tags, tt)
	}
	// Every entry also carries its rule's tag (tagset.go), so everything a
	// rule stored can be dropped without a SCAN.
	rt := ruleTag(r.Name)
	r.tags = append(r.tags, template{raw: rt, parts: []part{{kind: partLiteral, text: rt}}})
	r.query = map[string]bool{}
	for _, name := range r.IgnoreQuery {
		r.query[name] = true
	}
	keyHasUser := false
	for _, part := range r.key.parts {
		if part.kind == partQuery {
			r.query[part.name] = true
		}
		if part.kind == partExternal && strings.Contains(part.name, "user") {
			keyHasUser = true
			if !r.PerUser {
				return fmt.Errorf("cache rule %q: key uses {%s}; mark the rule per_user", r.Name, part.name)
			}
		}
	}
	if r.PerUser && !keyHasUser {
		// Without the user in the key, "per user" would share private answers.
		return fmt.Errorf("cache rule %q: a per_user key must contain the user, e.g. {http.auth.user.id}", r.Name)
	}
	if r.PerUser && r.Public {
		return fmt.Errorf("cache rule %q: per_user and public contradict each other", r.Name)
	}
	return nil
}

func (ir *InvalidationRule) compile(m PathMatching) error {
	if len(ir.Methods) == 0 {
		return errors.New("invalidation rule needs a method")
	}
	for i, m := range ir.Methods {
		m = strings.ToUpper(m)
		switch m {
		case "POST", "PUT", "PATCH", "DELETE":
		default:
			return fmt.Errorf("invalidation rule: %s is not a mutating method", m)
		}
		ir.Methods[i] = m
	}
	var err error
	if ir.path, err = compilePattern(ir.Path, m); err != nil {
		return err
	}
	if len(ir.Tags) == 0 {
		return fmt.Errorf("invalidation rule %s %s names no tags", strings.Join(ir.Methods, ","), ir.Path)
	}
	ir.tags = ir.tags[:0]
	for _, t := range ir.Tags {
		tt, err := compileTemplate(t, ir.path)
		if err != nil {
			return fmt.Errorf("invalidation rule %s: tag: %w", ir.Path, err)
		}
		ir.tags = append(ir.tags, tt)
	}
	return nil
}

// pattern is a compiled path pattern: literal segments and parameters.
type pattern struct {
	segs []patSeg
	rest bool // last segment is {name...}
	opts PathMatching
}

type patSeg struct {
	literal string
	param   string // non-empty for {param}
}

func compilePattern(p string, m PathMatching) (pattern, error) {
	if !strings.HasPrefix(p, "/") {
		return pattern{}, fmt.Errorf("path pattern %q must start with /", p)
	}
	pat := pattern{opts: m}
	seen := map[string]bool{}
	if !m.Strict && len(p) > 1 {
		// Express without strict routing: a pattern's own trailing slash is
		// optional as well.
		p = strings.TrimSuffix(p, "/")
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range parts {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			name := s[1 : len(s)-1]
			if strings.HasSuffix(name, "...") {
				if i != len(parts)-1 {
					return pattern{}, fmt.Errorf("path pattern %q: {%s} must be last", p, name)
				}
				name = strings.TrimSuffix(name, "...")
				pat.rest = true
			}
			if name == "" || strings.ContainsAny(name, "{}.:") || seen[name] {
				return pattern{}, fmt.Errorf("path pattern %q: bad or repeated parameter {%s}", p, name)
			}
			seen[name] = true
			pat.segs = append(pat.segs, patSeg{param: name})
			continue
		}
		if strings.ContainsAny(s, "{}") {
			return pattern{}, fmt.Errorf("path pattern %q: a parameter must be a whole segment", p)
		}
		pat.segs = append(pat.segs, patSeg{literal: s})
	}
	return pat, nil
}

// params holds matched path parameters; a small slice beats a map here.
type params []param

type param struct{ name, value string }

func (ps params) get(name string) (string, bool) {
	for _, p := range ps {
		if p.name == name {
			return p.value, true
		}
	}
	return "", false
}

// match matches an escaped URL path without allocating for literal
// segments. Parameter values are unescaped and bounded.
func (pat *pattern) match(path string, out params) (params, bool) {
	if path == "" || path[0] != '/' {
		return out, false
	}
	if !pat.opts.Strict && len(path) > 1 && path[len(path)-1] == '/' {
		path = path[:len(path)-1] // only one: /api/events/42// stays unmatched
	}
	rest := path[1:]
	for i, seg := range pat.segs {
		last := i == len(pat.segs)-1
		var s string
		if last && pat.rest {
			s, rest = rest, ""
		} else if j := strings.IndexByte(rest, '/'); j >= 0 {
			s, rest = rest[:j], rest[j+1:]
			if last {
				return out, false // more segments than the pattern
			}
		} else {
			s, rest = rest, ""
			if !last {
				return out, false
			}
		}
		if seg.param == "" {
			if s != seg.literal && (pat.opts.CaseSensitive || !strings.EqualFold(s, seg.literal)) {
				return out, false
			}
			continue
		}
		if s == "" || len(s) > 3*maxParamLen {
			return out, false
		}
		v, err := url.PathUnescape(s)
		if err != nil || v == "" || len(v) > maxParamLen {
			return out, false
		}
		out = append(out, param{seg.param, v})
	}
	return out, rest == ""
}
