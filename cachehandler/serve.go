package cachehandler

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// headerList is a prebuilt set of response headers. Each value slice has
// len == cap, so a later Header.Add by another handler appends to a copy
// and can never write into the shared backing array.
type headerList []headerKV

type headerKV struct {
	name  string
	value []string
}

// writeTo copies the values into one fresh backing array: handlers after
// the cache (Caddy's header replace operations) may edit values in place,
// and must never edit the stored entry or another response.
func (hl headerList) writeTo(h http.Header, extra int) []string {
	n := extra
	for _, kv := range hl {
		n += len(kv.value)
	}
	vals := make([]string, 0, n)
	for _, kv := range hl {
		start := len(vals)
		vals = append(vals, kv.value...)
		h[kv.name] = vals[start:len(vals):len(vals)]
	}
	return vals
}

// setOne sets name to a single value carved from vals (spare capacity
// reserved by writeTo).
func setOne(h http.Header, vals []string, name, v string) []string {
	start := len(vals)
	vals = append(vals, v)
	h[name] = vals[start:len(vals):len(vals)]
	return vals
}

// errUnservable: the entry cannot be sent (its body does not inflate);
// nothing has been written, so the caller can refetch.
var errUnservable = errors.New("cache entry cannot be served")

func one(v string) []string { return []string{v}[:1:1] }

// ageStrings holds Age values for the first hour, so a hit does not
// format a number to say how old it is.
var ageStrings = func() []string {
	t := make([]string, 3601)
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

func ageString(age time.Duration) string {
	s := int(age / time.Second)
	if s < 0 {
		s = 0
	}
	if s < len(ageStrings) {
		return ageStrings[s]
	}
	return strconv.Itoa(s)
}

// ruleOwnHeaders are the fields a rule entry rebuilds itself (dates, the
// representation's length, coding, validator and Vary) or that describe
// this edge's connection (Alt-Svc): never stored from the upstream.
var ruleOwnHeaders = map[string]bool{
	"Date": true, "Age": true, "Content-Length": true, "Content-Encoding": true, "Etag": true, "Vary": true,
	"Alt-Svc": true,
}

// droppedFromRuleEntry: a field a rule entry never stores nor takes from a
// 304. The fields no cache may store (RFC 9111 §3.1) and the per-client
// ones are standards mode's list, excludedFromStorage: one definition for
// both modes. The fields a response's Connection header lists are left out
// too (connectionListed).
func droppedFromRuleEntry(name string) bool { return excludedFromStorage(name) || ruleOwnHeaders[name] }

// prepare builds the header sets of both representations.
func prepare(key string, e *Entry, grace, l1TTL time.Duration, now time.Time) *prepared {
	p := &prepared{
		key:        key,
		entry:      e,
		freshUntil: e.StoredAt.Add(e.TTL),
		staleUntil: e.StoredAt.Add(e.TTL + grace),
	}
	p.l1Until = now.Add(l1TTL)
	if p.l1Until.After(p.staleUntil) || p.l1Until.Before(now) { // the Before catches overflow
		p.l1Until = p.staleUntil
	}
	base := make(headerList, 0, len(e.Header)+5)
	size := int64(entryOverhead + len(e.Body) + len(key))
	for name, vs := range e.Header {
		base = append(base, headerKV{name, append([]string(nil), vs...)[:len(vs):len(vs)]})
		for _, v := range vs {
			size += int64(len(name) + len(v))
		}
	}
	if e.ETag != "" {
		base = append(base, headerKV{"Etag", one(e.ETag)})
	}
	base = append(base, headerKV{"Vary", one(varyHeader(e))})
	if e.Gzipped {
		p.gzipHeader = append(base[:len(base):len(base)],
			headerKV{"Content-Encoding", one("gzip")},
			headerKV{"Content-Length", one(strconv.Itoa(len(e.Body)))})
		// The plain representation's length is known only after inflating,
		// which happens on the first plain hit.
		p.plainHeader = base
		size *= 2 // the inflated copy, once made
	} else {
		p.plainHeader = append(base[:len(base):len(base)], headerKV{"Content-Length", one(strconv.Itoa(len(e.Body)))})
		p.gzipHeader = p.plainHeader
		p.plainBody = e.Body
		p.plainOnce.Do(func() {})
	}
	p.size = size
	return p
}

// plain returns the identity body, inflating a gzip entry once.
func (p *prepared) plain(limit int) ([]byte, error) {
	p.plainOnce.Do(func() {
		p.plainBody, p.plainErr = decompressBody(p.entry.Body, limit)
		p.plainLen = strconv.Itoa(len(p.plainBody))
	})
	return p.plainBody, p.plainErr
}

// acceptsGzip reports whether Accept-Encoding allows gzip (q > 0),
// without allocating.
func acceptsGzip(r *http.Request) bool {
	for _, line := range r.Header["Accept-Encoding"] {
		for line != "" {
			var item string
			item, line, _ = strings.Cut(line, ",")
			coding, params, _ := strings.Cut(strings.TrimSpace(item), ";")
			coding = strings.TrimSpace(coding)
			if !strings.EqualFold(coding, "gzip") && coding != "*" {
				continue
			}
			q := strings.TrimSpace(params)
			if strings.HasPrefix(q, "q=") && strings.Trim(q[2:], "0.") == "" {
				return false // q=0: explicitly refused
			}
			return true
		}
	}
	return false
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 §13.1.2).
func etagMatches(ifNoneMatch []string, etag string) bool {
	if etag == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for _, line := range ifNoneMatch {
		for line != "" {
			var item string
			item, line, _ = strings.Cut(line, ",")
			item = strings.TrimSpace(item)
			if item == "*" || strings.TrimPrefix(item, "W/") == want {
				return true
			}
		}
	}
	return false
}

// writeHit sends a stored response: 304 when the client's validator
// matches, gzip when the client takes it, the plain body otherwise.
func (c *Cache) writeHit(w http.ResponseWriter, r *http.Request, p *prepared, status string, now time.Time) error {
	h := w.Header()
	e := p.entry
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagMatches(inm, e.ETag) && e.Status == http.StatusOK {
		// RFC 9110 §15.4.5: a 304 carries the validators and caching fields.
		vals := make([]string, 0, 4+len(e.Header["Cache-Control"]))
		vals = setOne(h, vals, "Etag", e.ETag)
		if cc, ok := e.Header["Cache-Control"]; ok {
			start := len(vals)
			vals = append(vals, cc...)
			h["Cache-Control"] = vals[start:len(vals):len(vals)]
		}
		vals = setOne(h, vals, "Vary", varyHeader(e))
		vals = setOne(h, vals, "Age", ageString(now.Sub(e.StoredAt)))
		setOne(h, vals, "Cache-Status", status)
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	body := e.Body
	var vals []string
	if e.Gzipped && acceptsGzip(r) {
		vals = p.gzipHeader.writeTo(h, 2)
	} else {
		var err error
		if body, err = p.plain(c.cfg.MaxEntryBytes); err != nil {
			return errUnservable
		}
		vals = p.plainHeader.writeTo(h, 3)
		if e.Gzipped {
			vals = setOne(h, vals, "Content-Length", p.plainLen)
		}
	}
	vals = setOne(h, vals, "Age", ageString(now.Sub(e.StoredAt)))
	setOne(h, vals, "Cache-Status", status)
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(body)
	return err
}
