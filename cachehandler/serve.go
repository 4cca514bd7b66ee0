package cachehandler

import (
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

func (hl headerList) writeTo(h http.Header) {
	for _, kv := range hl {
		h[kv.name] = kv.value
	}
}

func one(v string) []string { return []string{v}[:1:1] }

// ageValues holds Age header values for the first hour, so a hit does not
// allocate to say how old it is.
var ageValues = func() [][]string {
	t := make([][]string, 3601)
	for i := range t {
		t[i] = one(strconv.Itoa(i))
	}
	return t
}()

func ageValue(age time.Duration) []string {
	s := int(age / time.Second)
	if s < 0 {
		s = 0
	}
	if s < len(ageValues) {
		return ageValues[s]
	}
	return one(strconv.Itoa(s))
}

// Headers the cache owns or that must never be replayed from a stored
// response.
var droppedHeaders = map[string]bool{
	"Set-Cookie": true, "Set-Cookie2": true, "Date": true, "Age": true, "Cache-Status": true,
	"Content-Length": true, "Content-Encoding": true, "Etag": true, "Vary": true,
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Proxy-Authenticate": true, "Alt-Svc": true,
}

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
	base = append(base, headerKV{"Vary", one("Accept-Encoding")})
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
		p.plainLen = one(strconv.Itoa(len(p.plainBody)))
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
func (c *Cache) writeHit(w http.ResponseWriter, r *http.Request, p *prepared, status []string, now time.Time) error {
	h := w.Header()
	e := p.entry
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagMatches(inm, e.ETag) && e.Status == http.StatusOK {
		// RFC 9110 §15.4.5: a 304 carries the validators and caching fields.
		h["Etag"] = one(e.ETag)
		if cc, ok := e.Header["Cache-Control"]; ok {
			h["Cache-Control"] = cc[:len(cc):len(cc)]
		}
		h["Vary"] = one("Accept-Encoding")
		h["Age"] = ageValue(now.Sub(e.StoredAt))
		h["Cache-Status"] = status
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	body := e.Body
	if e.Gzipped && acceptsGzip(r) {
		p.gzipHeader.writeTo(h)
	} else {
		var err error
		if body, err = p.plain(c.cfg.MaxEntryBytes); err != nil {
			return err
		}
		p.plainHeader.writeTo(h)
		if e.Gzipped {
			h["Content-Length"] = p.plainLen
		}
	}
	h["Age"] = ageValue(now.Sub(e.StoredAt))
	h["Cache-Status"] = status
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(body)
	return err
}
