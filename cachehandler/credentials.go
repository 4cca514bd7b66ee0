package cachehandler

import (
	"net/http"
	"slices"
	"strings"
)

// maxCookieParts is the number of ';'-separated parts beyond which Go's
// cookie parser (net/http readCookies, GODEBUG httpcookiemaxnum) returns
// no cookie at all. Such a header may still carry a session that the
// origin's own parser reads, so it counts as credentialed: a request the
// edge cannot read is never taken for an anonymous one.
const maxCookieParts = 3000

// DefaultIdentityHeaders are the trusted headers edge_session sets on
// requests it has identified; a request carrying one is credentialed.
var DefaultIdentityHeaders = []string{"X-Ticketi-User-Id", "X-Ticketi-Username", "X-Ticketi-Verified"}

// credentialed reports whether r carries anything that may make the
// origin personalise its answer: an Authorization header, a credential
// cookie (read with our own scanner, not Go's, which gives up on long
// headers and skips values it finds invalid), a Cookie header too long
// to read, an identity header, or a session found by edge_session.
func (c *Cache) credentialed(r *http.Request, useResolver bool) bool {
	if len(r.Header["Authorization"]) > 0 {
		return true
	}
	if lines := r.Header["Cookie"]; len(lines) > 0 {
		if cookieParts(lines) > maxCookieParts || hasCredentialCookie(lines, c.cfg.CredentialCookies) {
			return true
		}
	}
	for k := range r.Header {
		if c.isIdentityHeader(k) {
			return true
		}
	}
	if useResolver && c.cfg.Resolve != nil {
		if uid, ok := c.cfg.Resolve(r, "http.auth.user.id"); ok && uid != "" {
			return true
		}
	}
	return false
}

func cookieParts(lines []string) int {
	n := 0
	for _, line := range lines {
		n += strings.Count(line, ";") + 1
	}
	return n
}

// hasCredentialCookie scans Cookie lines the way the origin's parser
// (the npm cookie package behind Express) reads them: parts split on ';',
// the name is what precedes the first '=', trimmed.
func hasCredentialCookie(lines []string, names []string) bool {
	if len(names) == 0 {
		return false
	}
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			name, _, ok := strings.Cut(part, "=")
			if !ok {
				continue
			}
			name = strings.TrimSpace(name)
			for _, want := range names {
				if name == want {
					return true
				}
			}
		}
	}
	return false
}

// anonymous returns the request a public rule sends upstream: r without
// Authorization, credential cookies or identity headers, so what the
// origin answers (and the cache stores) is what an anonymous client would
// get. A Cookie header too long to read is dropped whole. r itself is
// left untouched for the handlers after the cache.
func (c *Cache) anonymous(r *http.Request) *http.Request {
	if !c.credentialed(r, false) {
		return r
	}
	r2 := r.Clone(r.Context())
	h := r2.Header
	delete(h, "Authorization")
	for k := range h {
		if c.isIdentityHeader(k) {
			delete(h, k)
		}
	}
	if lines := h["Cookie"]; len(lines) > 0 {
		if kept := stripCookies(lines, c.cfg.CredentialCookies); kept == "" {
			delete(h, "Cookie")
		} else {
			h["Cookie"] = []string{kept}
		}
	}
	return r2
}

// stripCookies joins the parts of lines whose names are not credential
// cookies ("" when none are left, or when the header is too long to read).
func stripCookies(lines []string, names []string) string {
	if cookieParts(lines) > maxCookieParts {
		return ""
	}
	var b strings.Builder
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			name, _, _ := strings.Cut(part, "=")
			name = strings.TrimSpace(name)
			if name == "" || slices.Contains(names, name) {
				continue
			}
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(strings.TrimSpace(part))
		}
	}
	return b.String()
}

// isIdentityHeader reports whether name is one of the identity headers in
// any spelling a proxy or CGI layer would take for the same (letter case,
// '_' for '-'), as sessionauth.StripIdentityHeaders does. It does not
// allocate: it runs on every cacheable request.
func (c *Cache) isIdentityHeader(name string) bool {
	for _, want := range c.cfg.IdentityHeaders {
		if sameHeaderName(name, want) {
			return true
		}
	}
	return false
}

func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := foldByte(a[i]), foldByte(b[i])
		if x != y {
			return false
		}
	}
	return true
}

func foldByte(b byte) byte {
	switch {
	case b >= 'A' && b <= 'Z':
		return b + ('a' - 'A')
	case b == '_':
		return '-'
	}
	return b
}
