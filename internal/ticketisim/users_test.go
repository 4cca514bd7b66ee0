package ticketisim

import (
	"net/http"
	"strings"
	"testing"
)

func TestUserProfile(t *testing.T) {
	s := newTestSim(t)
	rec := do(t, s, "GET", "/api/users/1/profile", "")
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPublic)
	if rec.Header().Get("ETag") == "" {
		t.Fatalf("GET without ETag")
	}
	u := decodeBody[userBody[meView]](t, rec).User
	if u.ID != 1 || u.Username != "alice" || !u.IsVerified || u.Email != "" {
		t.Fatalf("public profile: %+v", u)
	}
	if body := rec.Body.String(); strings.Contains(body, "secret1") || strings.Contains(body, "password") || strings.Contains(body, "email") {
		t.Fatalf("public profile leaks private fields: %s", body)
	}
	expectError(t, do(t, s, "GET", "/api/users/51/profile", ""), http.StatusNotFound)
	expectError(t, do(t, s, "GET", "/api/users/me1/profile", ""), http.StatusBadRequest)
}

func TestFollowers(t *testing.T) {
	s := newTestSim(t)
	count := func() int {
		rec := do(t, s, "GET", "/api/users/7/followers", "")
		expect(t, rec, http.StatusOK)
		header(t, rec, "Cache-Control", ccPublic)
		return decodeBody[followersBody](t, rec).Followers
	}
	start := count()
	if start != 10 {
		t.Fatalf("seeded followers of user 7 = %d, want 10", start)
	}

	expectError(t, do(t, s, "POST", "/api/users/7/follow", ""), http.StatusUnauthorized)
	rec := do(t, s, "POST", "/api/users/7/follow", "", as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, HeaderInvalidate, "user:followers:7")
	if b := decodeBody[followersBody](t, rec); b.Followers != start+1 || b.Following == nil || !*b.Following {
		t.Fatalf("follow answer: %s", rec.Body.String())
	}
	// Following twice is idempotent.
	expect(t, do(t, s, "POST", "/api/users/7/follow", "", as(1)...), http.StatusOK)
	if got := count(); got != start+1 {
		t.Fatalf("followers after follow = %d, want %d", got, start+1)
	}

	rec = do(t, s, "DELETE", "/api/users/7/follow", "", as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, HeaderInvalidate, "user:followers:7")
	if got := count(); got != start {
		t.Fatalf("followers after unfollow = %d, want %d", got, start)
	}

	expectError(t, do(t, s, "POST", "/api/users/1/follow", "", as(1)...), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/api/users/99/follow", "", as(1)...), http.StatusNotFound)
	expectError(t, do(t, s, "DELETE", "/api/users/x/follow", "", as(1)...), http.StatusBadRequest)
	expectError(t, do(t, s, "GET", "/api/users/99/followers", ""), http.StatusNotFound)
}

func TestUserEvents(t *testing.T) {
	s := newTestSim(t)
	l := decodeBody[listResp](t, do(t, s, "GET", "/api/users/2/events?page=1", ""))
	if l.Total == 0 || l.OrganizerID != 2 {
		t.Fatalf("user 2 events: %+v", l)
	}
	if l := decodeBody[listResp](t, do(t, s, "GET", "/api/users/30/events", "")); l.Total != 0 || l.Events == nil {
		t.Fatalf("user 30 organises nothing, got %+v", l)
	}
	expectError(t, do(t, s, "GET", "/api/users/2/events?page=-2", ""), http.StatusBadRequest)
	expectError(t, do(t, s, "GET", "/api/users/77/events", ""), http.StatusNotFound)
}

func TestMe(t *testing.T) {
	s := newTestSim(t)
	expectError(t, do(t, s, "GET", "/api/users/me", ""), http.StatusUnauthorized)
	expectError(t, do(t, s, "GET", "/api/users/me", "", HeaderUserID, "alice"), http.StatusUnauthorized)
	expectError(t, do(t, s, "GET", "/api/users/me", "", as(404)...), http.StatusNotFound)

	rec := do(t, s, "GET", "/api/users/me", "", as(2)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPrivate)
	me := decodeBody[userBody[meView]](t, rec).User
	if me.ID != 2 || me.Username != "bob" || me.Email != "bob@example.test" {
		t.Fatalf("me: %+v", me)
	}
	if strings.Contains(rec.Body.String(), "secret2") {
		t.Fatalf("me leaks the password")
	}

	expectError(t, do(t, s, "PUT", "/api/users/me", `{"bio":"hi"}`), http.StatusUnauthorized)
	rec = do(t, s, "PUT", "/api/users/me", `{"bio":"Runs the Accra jazz nights.","displayName":"Bob M."}`, as(2)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, HeaderInvalidate, "user:profile:2")
	header(t, rec, "Cache-Control", ccPrivate)
	prof := decodeBody[userBody[profileView]](t, do(t, s, "GET", "/api/users/2/profile", "")).User
	if prof.Bio != "Runs the Accra jazz nights." || prof.DisplayName != "Bob M." {
		t.Fatalf("profile after update: %+v", prof)
	}
	expectError(t, do(t, s, "PUT", "/api/users/me", `{"displayName":"  "}`, as(2)...), http.StatusBadRequest)
	expectError(t, do(t, s, "PUT", "/api/users/me", `{"bio":"`+strings.Repeat("x", 501)+`"}`, as(2)...), http.StatusBadRequest)
	expectError(t, do(t, s, "PUT", "/api/users/me", `{"bio":`, as(2)...), http.StatusBadRequest)
}
