package ticketisim

import (
	"net/http"
	"strings"
	"testing"
)

func TestLogin(t *testing.T) {
	s := newTestSim(t)
	for _, c := range []struct{ body, identity string }{
		{`{"username":"alice","password":"secret1"}`, `{"userId":"1","username":"alice","isVerified":true}`},
		{`{"username":"bob","password":"secret2"}`, `{"userId":"2","username":"bob","isVerified":true}`},
		{`{"username":"user10","password":"password10"}`, `{"userId":"10","username":"user10","isVerified":false}`},
	} {
		rec := do(t, s, "POST", "/api/auth/login", c.body)
		expect(t, rec, http.StatusOK)
		header(t, rec, HeaderIdentity, c.identity)
		header(t, rec, "Cache-Control", ccPrivate)
		if u := decodeBody[userBody[meView]](t, rec).User; u.Username == "" || strings.Contains(rec.Body.String(), "secret") {
			t.Fatalf("login body: %s", rec.Body.String())
		}
	}
	for body, status := range map[string]int{
		`{"username":"alice","password":"nope"}`:   http.StatusUnauthorized,
		`{"username":"nobody","password":"x"}`:     http.StatusUnauthorized,
		`{"username":"alice"}`:                     http.StatusBadRequest,
		``:                                         http.StatusBadRequest,
		`{"username":`:                             http.StatusBadRequest,
		`{"username":1,"password":"secret1"}`:      http.StatusBadRequest,
		`{"username":"alice","password":"secret"}`: http.StatusUnauthorized,
	} {
		rec := do(t, s, "POST", "/api/auth/login", body)
		expectError(t, rec, status)
		if rec.Header().Get(HeaderIdentity) != "" {
			t.Fatalf("failed login %q still sent an identity", body)
		}
	}
}

func TestLogout(t *testing.T) {
	s := newTestSim(t)
	rec := do(t, s, "POST", "/api/auth/logout", "", as(1)...)
	expect(t, rec, http.StatusOK)
	if rec.Body.String() != `{"ok":true}` {
		t.Fatalf("logout body %q", rec.Body.String())
	}
}

func TestRegister(t *testing.T) {
	s := newTestSim(t)
	rec := do(t, s, "POST", "/api/auth/register", `{"username":"Carol_9","password":"hunter22","email":"carol@example.test"}`)
	expect(t, rec, http.StatusCreated)
	header(t, rec, HeaderIdentity, `{"userId":"51","username":"Carol_9","isVerified":false}`)
	if u := decodeBody[userBody[meView]](t, rec).User; u.ID != 51 || u.DisplayName != "Carol_9" {
		t.Fatalf("registered: %+v", u)
	}
	expect(t, do(t, s, "POST", "/api/auth/login", `{"username":"carol_9","password":"hunter22"}`), http.StatusOK)
	expect(t, do(t, s, "GET", "/api/users/51/profile", ""), http.StatusOK)

	expectError(t, do(t, s, "POST", "/api/auth/register", `{"username":"ALICE","password":"whatever"}`), http.StatusConflict)
	for _, bad := range []string{
		`{"username":"ab","password":"longenough"}`,
		`{"username":"has space","password":"longenough"}`,
		`{"username":"dave","password":"short"}`,
		`{"username":"dave","password":"longenough","email":"nope"}`,
		`not json`,
	} {
		expectError(t, do(t, s, "POST", "/api/auth/register", bad), http.StatusBadRequest)
	}
}

func TestPayments(t *testing.T) {
	s := newTestSim(t)
	expectError(t, do(t, s, "POST", "/api/payments/initialize", `{"eventId":42,"quantity":2}`), http.StatusUnauthorized)

	type initResp struct {
		Reference string `json:"reference"`
		Amount    int    `json:"amount"`
	}
	rec := do(t, s, "POST", "/api/payments/initialize", `{"eventId":42,"quantity":2}`, as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPrivate)
	first := decodeBody[initResp](t, rec)
	second := decodeBody[initResp](t, do(t, s, "POST", "/api/payments/initialize", `{"eventId":42,"quantity":2}`, as(1)...))
	if !strings.HasPrefix(first.Reference, "ref_") || first.Reference == second.Reference || first.Amount <= 0 {
		t.Fatalf("references %q and %q", first.Reference, second.Reference)
	}

	path := "/api/payments/verify/" + first.Reference
	expectError(t, do(t, s, "GET", path, ""), http.StatusUnauthorized)
	rec = do(t, s, "GET", path, "", as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPerUser)
	if rec.Header().Get("ETag") == "" {
		t.Fatalf("GET without ETag")
	}
	p := decodeBody[struct{ Payment payment }](t, rec).Payment
	if p.Reference != first.Reference || p.Status != "success" || p.EventID != 42 || p.Quantity != 2 {
		t.Fatalf("verification: %s", rec.Body.String())
	}
	for _, word := range []string{"card", "pan", "cvv", "userId"} {
		if strings.Contains(strings.ToLower(rec.Body.String()), word) {
			t.Fatalf("verification mentions %q: %s", word, rec.Body.String())
		}
	}
	// Someone else's reference looks exactly like an unknown one.
	if msg := expectError(t, do(t, s, "GET", path, "", as(2)...), http.StatusNotFound); msg != "payment not found" {
		t.Fatalf("other user's verify: %q", msg)
	}
	expectError(t, do(t, s, "GET", "/api/payments/verify/ref_000999deadbeef", "", as(1)...), http.StatusNotFound)
	expectError(t, do(t, s, "GET", "/api/payments/verify/nope", "", as(1)...), http.StatusBadRequest)

	expectError(t, do(t, s, "POST", "/api/payments/initialize", `{"quantity":1}`, as(1)...), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/api/payments/initialize", `{"eventId":42,"quantity":50}`, as(1)...), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/api/payments/initialize", `{"eventId":999}`, as(1)...), http.StatusNotFound)
	expectError(t, do(t, s, "POST", "/api/payments/initialize", `{"eventId":25}`, as(1)...), http.StatusConflict)
}
