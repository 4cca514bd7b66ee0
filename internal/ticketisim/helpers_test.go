package ticketisim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func newTestSim(t *testing.T) *Sim {
	t.Helper()
	return New(Options{Instant: true, Logf: t.Logf})
}

// do sends one request straight to the handler; hdr holds name/value pairs.
func do(t *testing.T, h http.Handler, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// as is the identity header the edge would add for user uid.
func as(uid int) []string { return []string{HeaderUserID, strconv.Itoa(uid)} }

func decodeBody[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("body is not JSON (%v): %q", err, rec.Body.String())
	}
	return v
}

// expect checks the status and that every response is JSON.
func expect(t *testing.T, rec *httptest.ResponseRecorder, status int) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body.String())
	}
	if status == http.StatusNotModified {
		return
	}
	if ct := rec.Header().Get("Content-Type"); ct != contentTypeJSON {
		t.Fatalf("Content-Type = %q, want %q", ct, contentTypeJSON)
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("body is not JSON: %q", rec.Body.String())
	}
}

// expectError checks a JSON error answer and returns its message.
func expectError(t *testing.T, rec *httptest.ResponseRecorder, status int) string {
	t.Helper()
	expect(t, rec, status)
	body := decodeBody[map[string]string](t, rec)
	if body["error"] == "" {
		t.Fatalf("error body without message: %s", rec.Body.String())
	}
	return body["error"]
}

func header(t *testing.T, rec *httptest.ResponseRecorder, name, want string) {
	t.Helper()
	if got := rec.Header().Get(name); got != want {
		t.Fatalf("%s = %q, want %q", name, got, want)
	}
}

type listResp struct {
	Events      []eventSummary `json:"events"`
	Page        int            `json:"page"`
	PerPage     int            `json:"perPage"`
	Total       int            `json:"total"`
	TotalPages  int            `json:"totalPages"`
	Location    string         `json:"location"`
	OrganizerID int            `json:"organizerId"`
}

type detailResp struct {
	Event event `json:"event"`
}
