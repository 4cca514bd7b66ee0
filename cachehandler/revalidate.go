package cachehandler

import (
	"net/http"
)

// Conditional revalidation (RFC 9111 §4.3), shared by the rule mode and
// the standards mode: the cache asks the origin with the stored
// response's own validators, and a 304 updates the stored response's
// header fields (§3.2, §4.3.4) while its body is kept.

// setValidators replaces a request's validators with a stored
// response's (§4.3.1): the cache's own conditional request, never the
// client's.
func setValidators(h http.Header, etag, lastModified string) {
	h.Del("If-None-Match")
	h.Del("If-Modified-Since")
	if etag != "" {
		h.Set("If-None-Match", etag)
	}
	if lastModified != "" {
		h.Set("If-Modified-Since", lastModified)
	}
}

// updatedHeader returns a copy of stored with the fields of a 304 applied
// (§3.2): each field the 304 carries replaces the stored one, except those
// skip names, those a cache never stores from an update (Content-Length,
// and the content coding and range, which describe a body the 304 does
// not have), those the update's Connection header lists (§3.1), and past
// the bounds a stored entry has.
func updatedHeader(stored, fresh http.Header, skip func(name string) bool) http.Header {
	out := stored.Clone()
	if out == nil {
		out = http.Header{}
	}
	size := headerBytes(out)
	listed := connectionListed(fresh)
	for name, vs := range fresh {
		if skip(name) || listed[name] || name == "Content-Length" || name == "Content-Encoding" || name == "Content-Range" {
			continue
		}
		old, had := out[name]
		if !had && len(out) >= maxHeaderCount {
			continue
		}
		grow := fieldBytes(name, vs) - fieldBytes(name, old)
		if size+grow > maxHeaderBytes {
			continue
		}
		size += grow
		out[name] = append([]string(nil), vs...)
	}
	return out
}

func headerBytes(h http.Header) int {
	n := 0
	for k, vs := range h {
		n += fieldBytes(k, vs)
	}
	return n
}

func fieldBytes(name string, vs []string) int {
	n := 0
	for _, v := range vs {
		n += len(name) + len(v)
	}
	return n
}

// revalidatable reports whether a rule entry can be refreshed with a
// conditional request: a 200 whose ETag came from the origin (not one the
// edge derived from the body) or that carries the origin's Last-Modified.
func revalidatable(e *Entry) bool {
	return e.Status == http.StatusOK && ((e.OriginETag && e.ETag != "") || e.Header.Get("Last-Modified") != "")
}

// conditionalFor returns up (a fill's upstream request, already a private
// copy or the client's own) as a conditional request for e's validators.
func conditionalFor(up *http.Request, e *Entry) *http.Request {
	up = up.Clone(up.Context())
	etag := ""
	if e.OriginETag {
		etag = e.ETag
	}
	setValidators(up.Header, etag, e.Header.Get("Last-Modified"))
	return up
}

// renewed is a rule entry refreshed by a 304 (§4.3.4): the stored body
// under the 304's header fields, fresh for the rule's TTL from now. It
// returns nil when the 304 cannot update old: its ETag names another
// representation, or the updated response may not be shared (then the
// caller asks again without validators).
func (c *Cache) renewed(old *Entry, h304 http.Header, rule *Rule, tags []string, credentialed bool) *Entry {
	if et := h304.Get("Etag"); et != "" && !etagMatches([]string{et}, old.ETag) {
		return nil
	}
	h := updatedHeader(old.Header, h304, droppedFromRuleEntry)
	check := h
	if len(h304["Set-Cookie"]) > 0 || len(h304["Set-Cookie2"]) > 0 || len(h304["Vary"]) > 0 {
		check = h.Clone()
		for _, name := range []string{"Set-Cookie", "Set-Cookie2", "Vary"} {
			if vs, ok := h304[name]; ok {
				check[name] = vs
			}
		}
	}
	if ok, _ := c.shareable(old.Status, check, rule.PerUser); !ok {
		return nil
	}
	if credentialed && !sharedDespiteCredentials(h) {
		return nil
	}
	return &Entry{Status: old.Status, Header: h, ETag: old.ETag, OriginETag: old.OriginETag, StoredAt: c.now(),
		TTL: rule.TTL, Tags: tags, Body: old.Body, Gzipped: old.Gzipped}
}
