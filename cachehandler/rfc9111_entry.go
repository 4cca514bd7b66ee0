package cachehandler

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ticketi/edge/internal/store"
)

// stdRecord is what the standards mode stores under one URL key: the
// variants of that URL (one per combination of the request headers the
// response's Vary names), newest last, bounded by Standard.MaxVariants.
// One key per URL keeps a hit to one Redis round trip and makes
// invalidating a URL (§4.4) one DEL.
type stdRecord struct {
	variants []*stdVariant
	// stamp: the Redis versions of the record's tags (tagsFor) when it was
	// stored. A reader serves the record from Redis only while every tag is
	// still at its stamp: a large tag's invalidation leaves its entries in
	// Redis for the background drain (tagset.go), unservable meanwhile.
	stamp []tagStamp
}

type tagStamp struct {
	tag string
	ver int64
}

// stdVariant is one stored response.
type stdVariant struct {
	Status       int
	Header       http.Header // as the origin sent it, minus what §3.1 excludes
	Body         []byte      // as the origin sent it (content codings untouched)
	RequestTime  time.Time
	ResponseTime time.Time
	VaryNames    []string // canonical names from the response's Vary
	VaryValues   []string // the request's normalised values for them
	Tags         []string

	// Derived when the variant is built or decoded, never stored.
	policy      responsePolicy
	lifetime    time.Duration
	hasLifetime bool
	initAge     time.Duration
}

// derive computes freshness and age inputs from the stored headers.
func (v *stdVariant) derive(s *Standard) {
	v.policy = policyOf(v.Header)
	date := dateOf(v.Header, v.ResponseTime)
	v.lifetime, v.hasLifetime = s.freshness(v.policy, v.Status, v.Header, date)
	v.initAge = initialAge(v.Header, date, v.RequestTime, v.ResponseTime)
	// max_ttl caps how long the edge serves the response without asking
	// again, counted from when it arrived: an origin's max-age=10000 with
	// Age: 3600 is still fresh here, for at most MaxTTL.
	if v.lifetime > v.initAge+s.MaxTTL {
		v.lifetime = v.initAge + s.MaxTTL
	}
}

// age is current_age of §4.2.3.
func (v *stdVariant) age(now time.Time) time.Duration {
	return v.initAge + max(now.Sub(v.ResponseTime), 0)
}

func (v *stdVariant) hasValidator() bool {
	return v.Header.Get("Etag") != "" || v.Header.Get("Last-Modified") != ""
}

// size is the variant's weight for the L1 byte bound.
func (v *stdVariant) size() int64 {
	n := int64(entryOverhead + len(v.Body))
	for k, vs := range v.Header {
		for _, s := range vs {
			n += int64(len(k) + len(s))
		}
	}
	return n
}

// matches reports whether a request selects this variant (§4.1).
func (v *stdVariant) matches(r *http.Request) bool {
	for i, name := range v.VaryNames {
		if normalisedVaryValue(r.Header, name) != v.VaryValues[i] {
			return false
		}
	}
	return true
}

// maxVaryNames bounds how many request headers one response may vary on;
// more is not stored.
const maxVaryNames = 8

// varyNames returns the canonical names a response varies on; star is
// true for "Vary: *" (never stored, §4.1), ok false when the list is
// too long to store.
func varyNames(h http.Header) (names []string, star, ok bool) {
	for _, line := range h["Vary"] {
		for _, f := range strings.Split(line, ",") {
			f = strings.TrimSpace(f)
			switch {
			case f == "":
				continue
			case f == "*":
				return nil, true, false
			}
			name := http.CanonicalHeaderKey(f)
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	if len(names) > maxVaryNames {
		return nil, false, false
	}
	sort.Strings(names)
	return names, false, true
}

// caseInsensitiveFields are request headers whose values compare without
// regard to case (their tokens are case-insensitive by definition).
var caseInsensitiveFields = map[string]bool{"Accept-Encoding": true, "Accept-Language": true, "Accept-Charset": true}

// maxVaryValueLen bounds one stored request value; a longer one makes the
// response unstorable for that request (bounded keys and entries).
const maxVaryValueLen = 512

// normalisedVaryValue combines a request header's lines as RFC 9110 §5.3
// allows (one comma-separated list), with whitespace around members
// removed, and case folded where the field's tokens are case-insensitive.
// An absent header is "\x00" so it never equals an empty one.
func normalisedVaryValue(h http.Header, name string) string {
	lines, ok := h[name]
	if !ok {
		return "\x00"
	}
	if name == "Accept-Language" || name == "Accept-Encoding" {
		return normalisedPreferences(lines)
	}
	var b strings.Builder
	for _, line := range lines {
		for _, m := range strings.Split(line, ",") {
			m = strings.TrimSpace(m)
			if m == "" {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			m = strings.ReplaceAll(m, " ", "")
			if caseInsensitiveFields[name] {
				m = strings.ToLower(m)
			}
			b.WriteString(m)
		}
	}
	return b.String()
}

// normalisedPreferences normalises a list of weighted tokens
// (Accept-Language, Accept-Encoding; RFC 9110 §12.4.2): tokens in lower
// case, whitespace gone, q=1 implied, and members ordered by weight then
// name, since members of equal weight are equally preferred whatever
// their order. "en, de" and "De , EN;q=1" are then one variant.
func normalisedPreferences(lines []string) string {
	type pref struct {
		token string
		q     float64
		qs    string
	}
	var prefs []pref
	for _, line := range lines {
		for _, m := range strings.Split(line, ",") {
			token, params, _ := strings.Cut(m, ";")
			token = strings.ToLower(strings.TrimSpace(token))
			if token == "" || len(prefs) >= 32 {
				continue
			}
			p := pref{token: token, q: 1}
			params = strings.ReplaceAll(strings.ToLower(params), " ", "")
			if v, ok := strings.CutPrefix(params, "q="); ok {
				if q, err := strconv.ParseFloat(v, 64); err == nil && q >= 0 && q <= 1 {
					p.q = q
					p.qs = strconv.FormatFloat(q, 'f', -1, 64)
				} else {
					p.qs = v // not a weight: kept as sent, so it never matches a valid one
				}
			} else if params != "" {
				p.qs = params
			}
			if p.qs == "1" {
				p.qs = ""
			}
			prefs = append(prefs, p)
		}
	}
	sort.SliceStable(prefs, func(i, j int) bool {
		if prefs[i].q != prefs[j].q {
			return prefs[i].q > prefs[j].q
		}
		return prefs[i].token < prefs[j].token
	})
	var b strings.Builder
	for i, p := range prefs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.token)
		if p.qs != "" {
			b.WriteString(";q=" + p.qs)
		}
	}
	return b.String()
}

// select returns the newest variant the request selects.
func (rec *stdRecord) pick(r *http.Request) *stdVariant {
	if rec == nil {
		return nil
	}
	for i := len(rec.variants) - 1; i >= 0; i-- {
		if v := rec.variants[i]; v.matches(r) {
			return v
		}
	}
	return nil
}

// with returns a new record holding v in place of any variant with the
// same Vary values, newest last, at most limit variants. Records are
// immutable once shared (L1 hands the same one to concurrent readers).
func (rec *stdRecord) with(v *stdVariant, limit int) *stdRecord {
	out := &stdRecord{}
	if rec != nil {
		for _, old := range rec.variants {
			if !slices.Equal(old.VaryNames, v.VaryNames) || !slices.Equal(old.VaryValues, v.VaryValues) {
				out.variants = append(out.variants, old)
			}
		}
	}
	out.variants = append(out.variants, v)
	if len(out.variants) > limit {
		out.variants = out.variants[len(out.variants)-limit:]
	}
	return out
}

// tagsFor is the record's tags: the URL's own tag and the mode's (so a
// URL invalidation and a whole-mode purge use the tag machinery, with its
// race checks and its replay after a Redis outage), then the union of the
// variants' tags.
func (rec *stdRecord) tagsFor(key string) []string {
	out := []string{stdURLTag(key), stdModeTag}
	for _, v := range rec.variants {
		for _, t := range v.Tags {
			if !slices.Contains(out, t) && len(out) < maxTagCount {
				out = append(out, t)
			}
		}
	}
	return out
}

// stamped is the record's tags with the versions it was stored under, as
// an Entry for l2.current; a tag without a stamp gets -1, which no version
// equals, so an unstamped record is never current.
func (rec *stdRecord) stamped(key string) *Entry {
	tags := rec.tagsFor(key)
	vers := make([]int64, len(tags))
	for i, t := range tags {
		vers[i] = -1
		for _, st := range rec.stamp {
			if st.tag == t {
				vers[i] = st.ver
				break
			}
		}
	}
	return &Entry{Tags: tags, TagVersions: vers}
}

func (rec *stdRecord) size() int64 {
	var n int64
	for _, v := range rec.variants {
		n += v.size()
	}
	return n
}

// stdMagic starts a record with its version stamp; stdMagicV1 records
// (before stamps) decode without one and are never served from Redis.
const (
	stdMagic   = "TS2"
	stdMagicV1 = "TS1"
)

// stdModeTag is carried by every standards-mode entry, as each rule's
// entries carry edge:rule:<name>.
const stdModeTag = store.RuleTagPrefix + StandardRuleName

// stdURLTag names one URL's entry in the tag machinery; hashed, so a long
// URL still makes a bounded tag.
func stdURLTag(key string) string {
	sum := sha256.Sum256([]byte(key))
	return store.URLTagPrefix + hex.EncodeToString(sum[:16])
}

// encode serialises the record (same framing and CRC32C as Entry), its
// version stamp last.
func (rec *stdRecord) encode() []byte {
	b := make([]byte, 0, 64+rec.size())
	b = append(b, stdMagic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rec.variants)))
	for _, v := range rec.variants {
		b = binary.BigEndian.AppendUint16(b, uint16(v.Status))
		b = binary.BigEndian.AppendUint64(b, uint64(v.RequestTime.UnixMilli()))
		b = binary.BigEndian.AppendUint64(b, uint64(v.ResponseTime.UnixMilli()))
		b = binary.BigEndian.AppendUint16(b, uint16(len(v.VaryNames)))
		for i := range v.VaryNames {
			b = appendStr(b, v.VaryNames[i])
			b = appendStr(b, v.VaryValues[i])
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(v.Tags)))
		for _, t := range v.Tags {
			b = appendStr(b, t)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(v.Header)))
		for k, vs := range v.Header {
			b = appendStr(b, k)
			b = binary.BigEndian.AppendUint16(b, uint16(len(vs)))
			for _, s := range vs {
				b = appendStr(b, s)
			}
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(v.Body)))
		b = append(b, v.Body...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(rec.stamp)))
	for _, st := range rec.stamp {
		b = appendStr(b, st.tag)
		b = binary.BigEndian.AppendUint64(b, uint64(st.ver))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeStdRecord parses a stored record, bounding every count so a
// corrupt value cannot make it allocate wildly or panic.
func decodeStdRecord(b []byte, s *Standard) (*stdRecord, error) {
	if len(b) < len(stdMagic)+4 {
		return nil, ErrCorrupt
	}
	stamped := string(b[:len(stdMagic)]) == stdMagic
	if !stamped && string(b[:len(stdMagicV1)]) != stdMagicV1 {
		return nil, ErrCorrupt
	}
	payload, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(payload, castagnoli) != sum {
		return nil, ErrCorrupt
	}
	r := reader{b: payload[len(stdMagic):]}
	n := int(r.u16())
	if n == 0 || n > s.MaxVariants {
		return nil, ErrCorrupt
	}
	rec := &stdRecord{}
	for range n {
		v := &stdVariant{}
		v.Status = int(r.u16())
		v.RequestTime = time.UnixMilli(int64(r.u64()))
		v.ResponseTime = time.UnixMilli(int64(r.u64()))
		nv := int(r.u16())
		if nv > maxVaryNames {
			return nil, ErrCorrupt
		}
		for range nv {
			v.VaryNames = append(v.VaryNames, r.str())
			v.VaryValues = append(v.VaryValues, r.str())
		}
		nt := int(r.u16())
		if nt > maxTagCount {
			return nil, ErrCorrupt
		}
		for range nt {
			v.Tags = append(v.Tags, r.str())
		}
		if v.Header = r.header(); v.Header == nil {
			return nil, ErrCorrupt
		}
		v.Body = r.bytes(int(r.u32()))
		if r.err || v.Status < 100 || v.Status > 999 {
			return nil, ErrCorrupt
		}
		v.derive(s)
		rec.variants = append(rec.variants, v)
	}
	if stamped {
		ns := int(r.u16())
		if ns > maxTagCount {
			return nil, ErrCorrupt
		}
		for range ns {
			tag := r.str()
			rec.stamp = append(rec.stamp, tagStamp{tag, int64(r.u64())})
		}
	}
	if r.err || len(r.b) != 0 {
		return nil, ErrCorrupt
	}
	return rec, nil
}
