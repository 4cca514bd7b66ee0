package cachehandler

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
)

// cacheableStatus are the statuses a rule may store (RFC 9111 §3 plus
// heuristically cacheable ones): a 404 for an unknown event is worth
// caching briefly during a flood, a 500 never is.
var cacheableStatus = map[int]bool{200: true, 203: true, 204: true, 300: true, 301: true, 308: true, 404: true, 410: true}

// recorder passes the upstream response to the client while keeping a
// bounded copy. In hold mode (a stale entry is at hand) a 5xx is not sent
// on: the caller answers with the stale entry instead.
type recorder struct {
	w    http.ResponseWriter
	c    *Cache
	rule *Rule
	fwd  string
	hold bool
	head bool // the client asked HEAD: the fill is a GET, the client gets no body
	// credentialed: the request went upstream with credentials (RFC 9111
	// §3.5: such an answer is shared only if it says public or s-maxage).
	credentialed bool

	upstreamHeader http.Header
	status         int
	wroteHeader    bool
	held           bool
	keep           bool   // still a candidate for storing
	reason         string // why not, for Cache-Status
	body           bytes.Buffer
	// preset are the headers other handlers set before the fill (rate-limit
	// answers, header directives): they belong to this response only.
	preset map[string]bool
	before http.Header // their values, to restore when a stale entry is sent instead
}

func newRecorder(w http.ResponseWriter, r *http.Request, c *Cache, rule *Rule, fwd string, hold bool) *recorder {
	rec := &recorder{w: w, c: c, rule: rule, fwd: fwd, hold: hold, head: r.Method == http.MethodHead}
	if h := w.Header(); len(h) > 0 {
		rec.preset = make(map[string]bool, len(h))
		for k := range h {
			rec.preset[k] = true
		}
		if hold {
			rec.before = h.Clone() // only a held 5xx needs them back
		}
	}
	return rec
}

// resetHeaders undoes what the upstream wrote into the shared header map
// while held, so a stale entry goes out with only its own headers.
func (rec *recorder) resetHeaders() {
	h := rec.w.Header()
	clear(h)
	for k, v := range rec.before {
		h[k] = v
	}
}

// FlushError flushes only once a final header has gone out: a flush while
// a 5xx is held (or before the header) would send a premature 200.
func (rec *recorder) FlushError() error {
	if !rec.wroteHeader || rec.held {
		return nil
	}
	return http.NewResponseController(rec.w).Flush()
}

func (rec *recorder) Header() http.Header { return rec.w.Header() }

// Unwrap lets http.ResponseController reach Flush and friends.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.w }

func (rec *recorder) WriteHeader(code int) {
	if rec.wroteHeader {
		return
	}
	if code >= 100 && code < 200 {
		rec.w.WriteHeader(code) // informational: pass on, not final
		return
	}
	rec.wroteHeader = true
	rec.status = code
	h := rec.w.Header()
	rec.c.stripInvalidateHeader(h)
	rec.upstreamHeader = h
	if rec.hold && code >= 500 {
		rec.held = true
		return
	}
	rec.keep, rec.reason = rec.c.shareable(code, h, rec.rule.PerUser)
	if rec.keep && rec.credentialed && !sharedDespiteCredentials(h) {
		rec.keep, rec.reason = false, "credentials"
	}
	status := rec.c.cfg.StatusName + "; fwd=" + rec.fwd + "; fwd-status=" + strconv.Itoa(code)
	if rec.keep {
		if cl, err := strconv.Atoi(h.Get("Content-Length")); err == nil && cl <= rec.c.cfg.MaxEntryBytes {
			status += "; stored; ttl=" + elapsedSeconds(rec.rule.TTL)
		}
	} else {
		status += "; detail=" + rec.reason
	}
	h["Cache-Status"] = one(status)
	rec.w.WriteHeader(code)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.held {
		return len(b), nil // swallowed: the stale entry will be sent instead
	}
	if rec.keep {
		if rec.body.Len()+len(b) > rec.c.cfg.MaxEntryBytes {
			// Too big to cache: stop copying, keep streaming.
			rec.keep, rec.reason = false, "too-large"
			rec.body = bytes.Buffer{}
		} else {
			rec.body.Write(b)
		}
	}
	if rec.head {
		return len(b), nil
	}
	return rec.w.Write(b)
}

// storable reports whether the whole response was kept.
func (rec *recorder) storable() bool { return rec.wroteHeader && rec.keep && !rec.held }

// keptHeader copies the end-to-end headers worth replaying.
func (rec *recorder) keptHeader() http.Header {
	out := make(http.Header, len(rec.upstreamHeader))
	size := 0
	for k, vs := range rec.upstreamHeader {
		if droppedHeaders[k] || rec.preset[k] || len(out) >= maxHeaderCount {
			continue
		}
		for _, v := range vs {
			size += len(k) + len(v)
		}
		if size > maxHeaderBytes {
			break
		}
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// sharedDespiteCredentials reports whether a response to a credentialed
// request says it may be stored by a shared cache (RFC 9111 §3.5: public
// or s-maxage; must-revalidate alone is not enough for an edge that serves
// stale on error).
func sharedDespiteCredentials(h http.Header) bool {
	cc := strings.Join(h["Cache-Control"], ",")
	return hasDirective(cc, "public") || hasDirective(cc, "s-maxage")
}

// shareable decides from status and headers whether a response may be
// stored. A per-user rule keys by user, so it may keep `private`
// responses (each user only ever gets their own); `no-store` and
// `no-cache` are honoured always.
func (c *Cache) shareable(code int, h http.Header, perUser bool) (bool, string) {
	if !cacheableStatus[code] {
		return false, "status"
	}
	if len(h["Set-Cookie"]) > 0 || len(h["Set-Cookie2"]) > 0 {
		return false, "set-cookie"
	}
	cc := strings.Join(h["Cache-Control"], ",")
	if hasDirective(cc, "no-store") || hasDirective(cc, "no-cache") || (!perUser && hasDirective(cc, "private")) {
		return false, "cache-control"
	}
	for _, v := range h["Vary"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" && !strings.EqualFold(f, "Accept-Encoding") {
				return false, "vary"
			}
		}
	}
	switch strings.ToLower(h.Get("Content-Encoding")) {
	case "", "identity", "gzip":
	default:
		return false, "encoding"
	}
	return true, ""
}
