package ticketisim

import (
	"encoding/json"
	"errors"
	"hash/fnv"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Header names shared with the edge.
const (
	// HeaderUserID is the trusted identity header the edge sets on requests
	// of a valid session; the sim treats its presence as "logged in".
	HeaderUserID = "X-Ticketi-User-Id"
	// HeaderIdentity carries the logged-in identity from login/register to
	// the edge, which strips it and creates its session from it.
	HeaderIdentity = "X-Ticketi-Identity"
	// HeaderInvalidate names, comma-separated, the cache tags a successful
	// mutation made stale.
	HeaderInvalidate = "X-Ticketi-Invalidate"
	// HeaderEchoCacheControl, on a request to /__sim/echo, is the
	// Cache-Control of the echo (no-store otherwise).
	HeaderEchoCacheControl = "X-Sim-Cache-Control"
	// HeaderEchoVary, on a request to /__sim/echo, is the Vary of the echo.
	HeaderEchoVary = "X-Sim-Vary"
)

const (
	contentTypeJSON = "application/json; charset=utf-8"
	ccPublic        = "public, max-age=60"
	ccPrivate       = "private, no-store"
	ccPerUser       = "private"
	ccNoStore       = "no-store"
	maxBodyBytes    = 1 << 20
	perPage         = 20
)

// apiError is an error that already knows its HTTP answer.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errf(status int, msg string) *apiError { return &apiError{status: status, msg: msg} }

var (
	errAuthRequired = errf(http.StatusUnauthorized, "authentication required")
	errBadJSON      = errf(http.StatusBadRequest, "invalid JSON body")
	errTooLarge     = errf(http.StatusRequestEntityTooLarge, "request body too large")
	errBadPage      = errf(http.StatusBadRequest, "invalid page")
)

type errorBody struct {
	Error string `json:"error"`
}

// writeJSON answers an /api request. Successful GETs carry a weak ETag and
// honour If-None-Match, as Express does by default.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, cacheControl string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, cacheControl = http.StatusInternalServerError, ccNoStore
		b = []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Cache-Control", cacheControl)
	if status == http.StatusOK && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		etag := weakETag(b)
		h.Set("ETag", etag)
		if etagMatches(r.Header.Get("If-None-Match"), etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	writeBody(w, status, b)
}

// writeRaw answers a /__sim request: never validated or revalidated, so a
// test's conditional headers reach the echo intact.
func writeRaw(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", ccNoStore)
	}
	writeBody(w, status, b)
}

func writeBody(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", contentTypeJSON)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	writeJSON(w, r, status, ccNoStore, errorBody{Error: msg})
}

// fail answers err, which is normally an *apiError.
func fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, r, ae.status, ae.msg)
		return
	}
	writeError(w, r, http.StatusInternalServerError, "internal error")
}

// invalidate names the cache tags a successful mutation affects.
func invalidate(w http.ResponseWriter, tags ...string) {
	w.Header().Set(HeaderInvalidate, strings.Join(tags, ", "))
}

func weakETag(b []byte) string {
	h := fnv.New64a()
	_, _ = h.Write(b)
	return `W/"` + strconv.FormatUint(h.Sum64(), 16) + `"`
}

// etagMatches applies If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for c := range strings.SplitSeq(header, ",") {
		c = strings.TrimSpace(c)
		if c == "*" || strings.TrimPrefix(c, "W/") == want {
			return true
		}
	}
	return false
}

// decodeJSON reads a body of at most 1 MiB into dst. An empty body counts as
// {} so that optional-field requests need no body at all.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err := dec.Decode(dst); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return bodyError(err)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err == nil {
			return errBadJSON
		}
		return bodyError(err)
	}
	return nil
}

func bodyError(err error) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return errTooLarge
	}
	return errBadJSON
}

// parseID accepts only canonical positive decimal ids ("7", not "07" or
// "+7"), so each resource has exactly one URL and hence one cache key.
func parseID(s string) (int, bool) {
	if s == "" || len(s) > 9 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func parsePage(r *http.Request) (int, error) {
	v := r.URL.Query().Get("page")
	if v == "" {
		return 1, nil
	}
	p, ok := parseID(v)
	if !ok {
		return 0, errBadPage
	}
	return p, nil
}

// identity returns the user id the edge vouched for.
func identity(r *http.Request) (int, error) {
	id, ok := parseID(strings.TrimSpace(r.Header.Get(HeaderUserID)))
	if !ok {
		return 0, errAuthRequired
	}
	return id, nil
}

// pathID parses the {name} wildcard as an id, naming the resource in the error.
func pathID(r *http.Request, name, what string) (int, error) {
	id, ok := parseID(r.PathValue(name))
	if !ok {
		return 0, errf(http.StatusBadRequest, "invalid "+what+" id")
	}
	return id, nil
}

// pageOf returns the page'th slice of perPage items; pages past the end are empty.
func pageOf[T any](all []T, page int) []T {
	if page-1 >= (len(all)+perPage-1)/perPage {
		return []T{}
	}
	start := (page - 1) * perPage
	return all[start:min(start+perPage, len(all))]
}

// listBody is the envelope of every paginated list.
type listBody struct {
	Events      any    `json:"events"`
	Page        int    `json:"page"`
	PerPage     int    `json:"perPage"`
	Total       int    `json:"total"`
	TotalPages  int    `json:"totalPages"`
	Location    string `json:"location,omitempty"`
	OrganizerID int    `json:"organizerId,omitempty"`
}

func newListBody(all []eventSummary, page int) listBody {
	return listBody{
		Events:     pageOf(all, page),
		Page:       page,
		PerPage:    perPage,
		Total:      len(all),
		TotalPages: (len(all) + perPage - 1) / perPage,
	}
}
