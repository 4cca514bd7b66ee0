package cachehandler

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// cacheableStatus are the statuses a rule may store (RFC 9111 §3 plus
// heuristically cacheable ones): a 404 for an unknown event is worth
// caching briefly during a flood, a 500 never is.
var cacheableStatus = map[int]bool{200: true, 203: true, 204: true, 300: true, 301: true, 308: true, 404: true, 410: true}

// fillMode is where a fill's upstream answer goes.
type fillMode uint8

const (
	modePending     fillMode = iota // no final header yet
	modeBuffer                      // shareable and small enough: read into memory at upstream speed
	modeStream                      // not storable: passed through to the leading client
	modeHeld                        // a 5xx with a stale entry in hand: swallowed
	modeNotModified                 // a 304 to the fill's own conditional request: renews the stale entry
)

// fillWriter is the ResponseWriter a fill's upstream writes to; it is not
// the leading client's. A shareable answer of at most MaxEntryBytes is read
// into memory at upstream speed, so the fill completes, and its followers
// are answered, whatever the leader's client does (an HTTP/2 zero window, a
// client that stops reading a large body): the leader is answered from the
// entry afterwards, at its own speed. An answer that cannot be stored (not
// shareable, over MaxEntryBytes, a 5xx without a stale entry) releases the
// followers at once and streams through to the leader, so memory stays
// bounded by MaxEntryBytes per fill.
type fillWriter struct {
	mu   sync.Mutex // a flush-interval timer of the proxy may call FlushError concurrently
	c    *Cache
	rule *Rule
	w    http.ResponseWriter // the leading client
	fwd  string
	hold bool
	head bool // the client asked HEAD: the fill is a GET, the client gets no body
	// credentialed: the request went upstream with credentials (RFC 9111
	// §3.5: such an answer is shared only if it says public or s-maxage).
	credentialed bool
	// revalidating: the fill asked with the stale entry's validators, so a
	// 304 is the origin's answer for the cache, not for the client.
	revalidating bool
	// release tells the followers there is nothing to share (idempotent).
	release func()

	header http.Header // the upstream's own header map, never the client's
	status int
	mode   fillMode
	reason string // why not stored, for Cache-Status
	body   bytes.Buffer
}

func newFillWriter(w http.ResponseWriter, r *http.Request, c *Cache, rule *Rule, fwd string, hold bool, release func()) *fillWriter {
	return &fillWriter{w: w, c: c, rule: rule, fwd: fwd, hold: hold, head: r.Method == http.MethodHead,
		release: release, header: make(http.Header)}
}

// Header is the upstream's header map until the answer streams through;
// then it is the client's, so trailers set after the body still go out.
func (fw *fillWriter) Header() http.Header {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mode == modeStream {
		return fw.w.Header()
	}
	return fw.header
}

// FlushError flushes only an answer that streams through: a buffered one
// goes out whole after the fill, and a flush while a 5xx is held would
// send a premature answer.
func (fw *fillWriter) FlushError() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mode != modeStream {
		return nil
	}
	return http.NewResponseController(fw.w).Flush()
}

func (fw *fillWriter) WriteHeader(code int) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.writeHeader(code)
}

func (fw *fillWriter) writeHeader(code int) {
	// Informational answers (103 Early Hints) are not passed on: the
	// leader's client must not be written to while the fill runs.
	if fw.mode != modePending || code < 200 {
		return
	}
	fw.status = code
	h := fw.header
	fw.c.stripInvalidateHeader(h)
	if fw.hold && code >= 500 {
		fw.mode = modeHeld
		return
	}
	if fw.revalidating && code == http.StatusNotModified {
		fw.mode = modeNotModified
		return
	}
	// What goes to the client is judged whole: a Set-Cookie or
	// Cache-Control set by a handler before the cache (a header directive)
	// is part of this answer too, though it is never stored.
	check := h
	if pre := fw.w.Header(); len(pre) > 0 {
		check = pre.Clone()
		addHeaders(check, h)
	}
	keep, reason := fw.c.shareable(code, check, fw.rule.PerUser)
	if strings.HasPrefix(reason, "vary") {
		fw.c.variantRefused(fw.rule.Name, reason, "")
	}
	if keep && fw.credentialed && !sharedDespiteCredentials(h) {
		keep, reason = false, "credentials"
	}
	if cl, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); keep && err == nil && cl > int64(fw.c.cfg.MaxEntryBytes) {
		keep, reason = false, "too-large"
	}
	if keep {
		fw.mode = modeBuffer
		return
	}
	fw.stream(reason)
}

// stream gives up on storing: the followers are released, and what was
// read so far and the rest of the answer go to the leading client.
func (fw *fillWriter) stream(reason string) error {
	fw.mode, fw.reason = modeStream, reason
	fw.release()
	h := fw.w.Header()
	addHeaders(h, fw.header)
	h["Cache-Status"] = one(fw.c.cfg.StatusName + "; fwd=" + fw.fwd + "; fwd-status=" + strconv.Itoa(fw.status) + "; detail=" + reason)
	fw.w.WriteHeader(fw.status)
	var err error
	if fw.body.Len() > 0 && !fw.head {
		_, err = fw.w.Write(fw.body.Bytes())
	}
	fw.body = bytes.Buffer{}
	return err
}

func (fw *fillWriter) Write(b []byte) (int, error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mode == modePending {
		fw.writeHeader(http.StatusOK)
	}
	switch fw.mode {
	case modeHeld, modeNotModified:
		return len(b), nil // swallowed: the stale entry will be sent instead
	case modeBuffer:
		if fw.body.Len()+len(b) <= fw.c.cfg.MaxEntryBytes {
			return fw.body.Write(b)
		}
		// Too big to cache: stop buffering, stream the rest.
		if err := fw.stream("too-large"); err != nil {
			return 0, err
		}
	}
	if fw.head {
		return len(b), nil
	}
	return fw.w.Write(b)
}

// addHeaders adds src's values to dst, as a proxy copying an upstream's
// headers onto a response does.
func addHeaders(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = append(dst[k], vs...)
	}
}

// complete reports whether the whole answer is in memory, ready to store.
func (fw *fillWriter) complete() bool { return fw.mode == modeBuffer }

// writeBuffered sends the buffered answer as the upstream gave it (when it
// could not be turned into an entry).
func (fw *fillWriter) writeBuffered() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mode != modeBuffer {
		return nil
	}
	return fw.stream(fw.reason)
}

// keptHeader copies the end-to-end headers worth replaying.
func (fw *fillWriter) keptHeader() http.Header {
	out := make(http.Header, len(fw.header))
	size := 0
	listed := connectionListed(fw.header)
	for k, vs := range fw.header {
		if droppedFromRuleEntry(k) || listed[k] || len(out) >= maxHeaderCount {
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
	if _, reason := c.ruleVary(h); reason != "" {
		return false, reason // variants.go
	}
	switch strings.ToLower(h.Get("Content-Encoding")) {
	case "", "identity", "gzip":
	default:
		return false, "encoding"
	}
	return true, ""
}
