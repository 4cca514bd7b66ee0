package cachehandler

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

type partKind uint8

const (
	partLiteral  partKind = iota
	partParam             // {id}: a path parameter
	partQuery             // {query.page:1}: a query value with an optional default
	partExternal          // {http.auth.user.id}: resolved by the Resolver
)

type part struct {
	kind     partKind
	text     string // literal text
	name     string
	def      string
	required bool // query without default: missing → not cacheable
}

// template is a compiled key or tag template.
type template struct {
	raw   string
	parts []part
}

func compileTemplate(s string, pat pattern) (template, error) {
	t := template{raw: s}
	if s == "" {
		return t, fmt.Errorf("empty template")
	}
	params := map[string]bool{}
	for _, seg := range pat.segs {
		if seg.param != "" {
			params[seg.param] = true
		}
	}
	for len(s) > 0 {
		open := strings.IndexByte(s, '{')
		if open < 0 {
			t.parts = append(t.parts, part{kind: partLiteral, text: s})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, part{kind: partLiteral, text: s[:open]})
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return t, fmt.Errorf("%q: unclosed {", t.raw)
		}
		inner := s[open+1 : open+end]
		s = s[open+end+1:]
		switch {
		case inner == "":
			return t, fmt.Errorf("%q: empty {}", t.raw)
		case strings.HasPrefix(inner, "query."):
			name, def, hasDef := strings.Cut(strings.TrimPrefix(inner, "query."), ":")
			if name == "" {
				return t, fmt.Errorf("%q: {query.} needs a name", t.raw)
			}
			t.parts = append(t.parts, part{kind: partQuery, name: name, def: def, required: !hasDef})
		case params[inner]:
			t.parts = append(t.parts, part{kind: partParam, name: inner})
		case strings.Contains(inner, "."):
			t.parts = append(t.parts, part{kind: partExternal, name: inner})
		default:
			return t, fmt.Errorf("%q: {%s} is not a parameter of the path pattern", t.raw, inner)
		}
	}
	return t, nil
}

// render builds the key. ok is false when a value is missing or too
// long, which makes the request uncacheable rather than wrongly keyed.
func (t *template) render(ps params, q url.Values, r *http.Request, resolve Resolver, buf []byte) ([]byte, bool) {
	for _, p := range t.parts {
		var v string
		switch p.kind {
		case partLiteral:
			buf = append(buf, p.text...)
			continue
		case partParam:
			v, _ = ps.get(p.name)
		case partQuery:
			vals := q[p.name]
			switch {
			case len(vals) > 1:
				return buf, false // ?page=1&page=2: ambiguous, do not guess
			case len(vals) == 1 && vals[0] != "":
				v = vals[0]
			case p.required:
				return buf, false
			default:
				v = p.def
			}
		case partExternal:
			if resolve == nil {
				return buf, false
			}
			var ok bool
			if v, ok = resolve(r, p.name); !ok || v == "" {
				return buf, false
			}
		}
		if len(v) > maxParamLen {
			return buf, false
		}
		buf = appendKeyValue(buf, v)
	}
	if len(buf) > maxKeyLen {
		return buf, false
	}
	return buf, true
}

// appendKeyValue percent-encodes everything outside a safe set, so that
// a value can neither add key segments (':') nor glob characters that a
// pattern purge would read as wildcards.
func appendKeyValue(buf []byte, v string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '@' {
			buf = append(buf, c)
			continue
		}
		buf = append(buf, '%', hex[c>>4], hex[c&15])
	}
	return buf
}

// glob is the template as a path.Match pattern: literals escaped, every
// variable part a '*'. Admin pattern purges use it to delete only keys a
// rule could have written.
func (t *template) glob() string {
	var b strings.Builder
	for _, p := range t.parts {
		if p.kind != partLiteral {
			b.WriteByte('*')
			continue
		}
		for i := 0; i < len(p.text); i++ {
			if c := p.text[i]; c == '*' || c == '?' || c == '[' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(p.text[i])
		}
	}
	return b.String()
}

// hostSeparator starts a key's host part. Key templates may not contain it,
// and appendKeyValue escapes it in values, so it is unambiguous.
const hostSeparator = '#'

// appendHost ends a key with the request's host (lower-cased, as host
// names are case-insensitive; the port kept, as the upstream sees it).
func appendHost(buf []byte, host string) ([]byte, bool) {
	if len(host) > maxParamLen {
		return buf, false
	}
	buf = append(buf, hostSeparator)
	buf = appendKeyValue(buf, strings.ToLower(host))
	return buf, len(buf) <= maxKeyLen
}
