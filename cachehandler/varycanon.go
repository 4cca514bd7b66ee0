package cachehandler

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Canonical Vary values. A rule may list, per request header, the few
// values its upstream really answers differently for (Rule.Vary): every
// request the rule looks up then carries exactly one of them, so the rule
// has at most that many variants for the header whatever clients send,
// instead of one per spelling until the 8-variant bound refuses the rest
// (a hostile client, or browsers' many Accept-Language lists, could fill
// the bound with junk and lock real languages out for an entry's life).
//
// The request's value is mapped to one listed value: for Accept-Language
// by RFC 4647 §3.4 lookup over the weighted list (highest q first, equal
// weights in the client's order; a range is truncated subtag by subtag, so
// fr-CA matches fr); for other headers the whole value, trimmed, matching
// one listed value in any case. Nothing matches (or no header): the first
// listed value. The request then goes on with that value in place of the
// client's, so the variant key, the upstream request of a fill or refresh,
// and so the stored answer are all the canonical value's.

const (
	// maxVaryCanonValues bounds the values listed for one header.
	maxVaryCanonValues = 32
	// maxVaryCanonValueLen bounds one listed value.
	maxVaryCanonValueLen = 64
	// maxLanguageRanges bounds the members of Accept-Language read, and
	// maxLanguageRangeLen each (a longer one is skipped): the lookup's
	// work per request stays bounded whatever the header holds.
	maxLanguageRanges   = 32
	maxLanguageRangeLen = 2 * maxVaryCanonValueLen
)

// VaryCanon maps one request header to one of a few values (see above).
type VaryCanon struct {
	// Header is the request header, e.g. Accept-Language.
	Header string
	// Values the header is mapped to; the first is the default.
	Values []string
}

// varyCanon is a compiled VaryCanon.
type varyCanon struct {
	name     string // canonical header key
	values   []string
	language bool // Accept-Language: RFC 4647 lookup
}

// compileVary checks the rule's Vary lines; identity are the identity
// headers (never a Vary line: they carry who the user is).
func (r *Rule) compileVary(identity []string) error {
	r.vary = nil
	if len(r.Vary) > maxVaryNames {
		return fmt.Errorf("cache rule %q: at most %d vary lines", r.Name, maxVaryNames)
	}
	for _, v := range r.Vary {
		if !validToken(v.Header) {
			return fmt.Errorf("cache rule %q: vary: %q is not a header name", r.Name, v.Header)
		}
		name := http.CanonicalHeaderKey(v.Header)
		switch {
		case name == "Cookie" || name == "Authorization" || name == "Proxy-Authorization" ||
			slices.ContainsFunc(identity, func(id string) bool { return sameHeaderName(name, id) }):
			return fmt.Errorf("cache rule %q: vary %s: a credential header cannot be canonicalised (per-user answers belong to per_user rules)", r.Name, v.Header)
		case name == "Accept-Encoding" || name == "Host":
			return fmt.Errorf("cache rule %q: vary %s: the edge handles that header itself", r.Name, v.Header)
		}
		for _, o := range r.vary {
			if o.name == name {
				return fmt.Errorf("cache rule %q: vary %s is given twice", r.Name, v.Header)
			}
		}
		if len(v.Values) == 0 || len(v.Values) > maxVaryCanonValues {
			return fmt.Errorf("cache rule %q: vary %s needs 1 to %d values", r.Name, v.Header, maxVaryCanonValues)
		}
		vc := varyCanon{name: name, language: name == "Accept-Language"}
		for _, val := range v.Values {
			if len(val) > maxVaryCanonValueLen || !validToken(val) || val == "*" || (vc.language && !languageTag(val)) {
				return fmt.Errorf("cache rule %q: vary %s: bad value %q (a token of at most %d bytes; a language tag for Accept-Language)", r.Name, v.Header, val, maxVaryCanonValueLen)
			}
			if slices.ContainsFunc(vc.values, func(o string) bool { return strings.EqualFold(o, val) }) {
				return fmt.Errorf("cache rule %q: vary %s: value %q is given twice", r.Name, v.Header, val)
			}
			vc.values = append(vc.values, val)
		}
		r.vary = append(r.vary, vc)
	}
	return nil
}

// languageTag reports whether s looks like a language tag: subtags of 1
// to 8 letters or digits joined by '-'.
func languageTag(s string) bool {
	for sub := range strings.SplitSeq(s, "-") {
		if sub == "" || len(sub) > 8 {
			return false
		}
		for i := 0; i < len(sub); i++ {
			if c := sub[i] | 0x20; !(c >= 'a' && c <= 'z' || sub[i] >= '0' && sub[i] <= '9') {
				return false
			}
		}
	}
	return true
}

// canonicalRequest is r with each of the rule's Vary headers set to its
// canonical value; r itself when it already carries them (the header map
// is copied, never written: the client's request is left as it came).
func (r *Rule) canonicalRequest(req *http.Request) *http.Request {
	var h http.Header
	for i := range r.vary {
		vc := &r.vary[i]
		want := vc.canonical(req.Header[vc.name])
		if cur := req.Header[vc.name]; len(cur) == 1 && cur[0] == want {
			continue
		}
		if h == nil {
			h = maps.Clone(req.Header)
			if h == nil {
				h = http.Header{}
			}
		}
		h[vc.name] = []string{want}
	}
	if h == nil {
		return req
	}
	req = req.WithContext(req.Context()) // a shallow copy
	req.Header = h
	return req
}

// canonical maps a request's lines of the header to one listed value.
func (vc *varyCanon) canonical(lines []string) string {
	if vc.language {
		return vc.values[languageLookup(lines, vc.values)]
	}
	if len(lines) == 1 {
		v := strings.TrimSpace(lines[0])
		for _, want := range vc.values {
			if strings.EqualFold(v, want) {
				return want
			}
		}
	}
	return vc.values[0]
}

// languageLookup is RFC 4647 §3.4 lookup of tags (the listed values) for
// an Accept-Language field: the index of the tag found, 0 when none is.
// Ranges are taken by weight, highest first (equal weights in the order
// sent; q=0 and unparsable weights excluded; "*" matches no particular
// tag, so it falls to the default; ranges over maxLanguageRangeLen bytes
// skipped). It does not allocate.
func languageLookup(lines []string, tags []string) int {
	type lr struct {
		rng string
		q   float64
	}
	var buf [maxLanguageRanges]lr
	ranges := buf[:0]
	for _, line := range lines {
		for line != "" && len(ranges) < maxLanguageRanges {
			var m string
			m, line, _ = strings.Cut(line, ",")
			rng, params, _ := strings.Cut(m, ";")
			rng = strings.TrimSpace(rng)
			if rng == "" || rng == "*" || len(rng) > maxLanguageRangeLen {
				continue
			}
			q := 1.0
			for p := range strings.SplitSeq(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(strings.TrimSpace(k), "q") {
					var err error
					if q, err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil || q > 1 {
						q = 0
					}
				}
			}
			if q > 0 {
				ranges = append(ranges, lr{rng, q})
			}
		}
	}
	// Insertion sort, stable: at most maxLanguageRanges members.
	for i := 1; i < len(ranges); i++ {
		for j := i; j > 0 && ranges[j].q > ranges[j-1].q; j-- {
			ranges[j], ranges[j-1] = ranges[j-1], ranges[j]
		}
	}
	for _, x := range ranges {
		rng := x.rng
		for {
			for i, t := range tags {
				if strings.EqualFold(rng, t) {
					return i
				}
			}
			cut := strings.LastIndexByte(rng, '-')
			if cut < 0 {
				break
			}
			rng = rng[:cut]
			if n := len(rng); n >= 2 && rng[n-2] == '-' { // a single-letter subtag goes with it
				rng = rng[:n-2]
			}
		}
	}
	return 0
}
