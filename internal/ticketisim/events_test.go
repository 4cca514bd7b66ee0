package ticketisim

import (
	"net/http"
	"strings"
	"testing"
)

func TestEventDetail(t *testing.T) {
	s := newTestSim(t)
	rec := do(t, s, "GET", "/api/events/42", "")
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPublic)
	if n := rec.Body.Len(); n < 1800 || n > 2000 {
		t.Fatalf("detail body is %d bytes, want about 1.9 KB", n)
	}
	e := decodeBody[detailResp](t, rec).Event
	if e.ID != 42 || e.Title == "" || e.Description == "" || e.Location == "" || e.OrganizerID == 0 || e.Version != 1 {
		t.Fatalf("incomplete event: %+v", e)
	}
	etag := rec.Header().Get("ETag")
	if !strings.HasPrefix(etag, `W/"`) {
		t.Fatalf("ETag = %q, want a weak tag", etag)
	}

	// Express answers a matching If-None-Match with 304; so does the sim.
	rec = do(t, s, "GET", "/api/events/42", "", "If-None-Match", etag)
	expect(t, rec, http.StatusNotModified)
	if rec.Body.Len() != 0 {
		t.Fatalf("304 with a body: %q", rec.Body.String())
	}
	expect(t, do(t, s, "GET", "/api/events/42", "", "If-None-Match", `W/"other"`), http.StatusOK)

	// HEAD is routed as GET.
	expect(t, do(t, s, "HEAD", "/api/events/42", ""), http.StatusOK)
}

func TestEventDetailErrors(t *testing.T) {
	s := newTestSim(t)
	for _, id := range []string{"abc", "0", "01", "-1", "+1", "1e3", "9999999999"} {
		expectError(t, do(t, s, "GET", "/api/events/"+id, ""), http.StatusBadRequest)
	}
	expectError(t, do(t, s, "GET", "/api/events/999", ""), http.StatusNotFound)
}

func TestDeterministicSeed(t *testing.T) {
	a, b := newTestSim(t), newTestSim(t)
	for _, path := range []string{"/api/events/7", "/api/events/trending?page=2", "/api/users/3/profile"} {
		ra, rb := do(t, a, "GET", path, ""), do(t, b, "GET", path, "")
		if ra.Body.String() != rb.Body.String() || ra.Header().Get("ETag") != rb.Header().Get("ETag") {
			t.Fatalf("%s differs between two sims", path)
		}
	}
}

func TestEventLists(t *testing.T) {
	s := newTestSim(t)

	pub := decodeBody[listResp](t, do(t, s, "GET", "/api/events/published", ""))
	if pub.Page != 1 || pub.PerPage != 20 || len(pub.Events) != 20 || pub.Total != 180 || pub.TotalPages != 9 {
		t.Fatalf("published page 1: page=%d perPage=%d len=%d total=%d pages=%d",
			pub.Page, pub.PerPage, len(pub.Events), pub.Total, pub.TotalPages)
	}
	if pub.Events[0].ID != 1 {
		t.Fatalf("published lists by id, got first %d", pub.Events[0].ID)
	}
	p2 := decodeBody[listResp](t, do(t, s, "GET", "/api/events/published?page=2", ""))
	if p2.Page != 2 || p2.Events[0].ID <= pub.Events[19].ID {
		t.Fatalf("page 2 does not follow page 1")
	}
	far := decodeBody[listResp](t, do(t, s, "GET", "/api/events/published?page=999999999", ""))
	if far.Events == nil || len(far.Events) != 0 {
		t.Fatalf("a page past the end should be an empty list, got %+v", far.Events)
	}
	for _, bad := range []string{"0", "-1", "abc", "1.5", "99999999999999999999"} {
		expectError(t, do(t, s, "GET", "/api/events/published?page="+bad, ""), http.StatusBadRequest)
	}

	tr := decodeBody[listResp](t, do(t, s, "GET", "/api/events/trending", ""))
	for i := 1; i < len(tr.Events); i++ {
		if tr.Events[i].Trending > tr.Events[i-1].Trending {
			t.Fatalf("trending not sorted by score")
		}
	}
	expectError(t, do(t, s, "GET", "/api/events/trending?page=x", ""), http.StatusBadRequest)

	rec := do(t, s, "GET", "/api/events/featured", "")
	expect(t, rec, http.StatusOK)
	header(t, rec, "Cache-Control", ccPublic)
	feat := decodeBody[listResp](t, rec)
	if len(feat.Events) == 0 || feat.Total != len(feat.Events) {
		t.Fatalf("featured: %+v", feat)
	}
	for _, e := range feat.Events {
		if !e.Featured {
			t.Fatalf("event %d in featured is not featured", e.ID)
		}
	}

	loc := decodeBody[listResp](t, do(t, s, "GET", "/api/events/location/Lagos?page=1", ""))
	if loc.Location != "lagos" || loc.Total == 0 {
		t.Fatalf("location list: %+v", loc)
	}
	for _, e := range loc.Events {
		if e.Location != "lagos" {
			t.Fatalf("event %d in lagos list is in %s", e.ID, e.Location)
		}
	}
	if none := decodeBody[listResp](t, do(t, s, "GET", "/api/events/location/atlantis", "")); none.Total != 0 {
		t.Fatalf("unknown location should be empty")
	}
	expectError(t, do(t, s, "GET", "/api/events/location/a%20b", ""), http.StatusBadRequest)

	org := decodeBody[listResp](t, do(t, s, "GET", "/api/events/organizer/1", ""))
	if org.OrganizerID != 1 || org.Total == 0 {
		t.Fatalf("organizer list: %+v", org)
	}
	for _, e := range org.Events {
		if e.OrganizerID != 1 {
			t.Fatalf("event %d in organizer 1's list belongs to %d", e.ID, e.OrganizerID)
		}
	}
	expectError(t, do(t, s, "GET", "/api/events/organizer/999", ""), http.StatusNotFound)
	expectError(t, do(t, s, "GET", "/api/events/organizer/x", ""), http.StatusBadRequest)
	expectError(t, do(t, s, "GET", "/api/events/organizer/1?page=0", ""), http.StatusBadRequest)
}

func TestEventMutations(t *testing.T) {
	s := newTestSim(t)
	body := `{"title":"Night Market","location":"Accra","price":2500,"ticketsTotal":50}`
	expectError(t, do(t, s, "POST", "/api/events", body), http.StatusUnauthorized)

	rec := do(t, s, "POST", "/api/events", body, as(3)...)
	expect(t, rec, http.StatusCreated)
	header(t, rec, HeaderInvalidate, "events:lists")
	header(t, rec, "Location", "/api/events/201")
	created := decodeBody[detailResp](t, rec).Event
	if created.ID != 201 || created.OrganizerID != 3 || created.Location != "accra" || created.Currency != "GHS" ||
		created.TicketsLeft != 50 || !created.Published || created.Version != 1 {
		t.Fatalf("created: %+v", created)
	}
	expect(t, do(t, s, "GET", "/api/events/201", ""), http.StatusOK)

	before := do(t, s, "GET", "/api/events/42", "").Header().Get("ETag")
	expectError(t, do(t, s, "PUT", "/api/events/42", `{"title":"x"}`), http.StatusUnauthorized)
	rec = do(t, s, "PUT", "/api/events/42", `{"title":"Renamed","price":0}`, as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, HeaderInvalidate, "event:42, events:lists")
	header(t, rec, "Cache-Control", ccNoStore)
	updated := decodeBody[detailResp](t, rec).Event
	if updated.Title != "Renamed" || updated.Price != 0 || updated.Version != 2 || updated.UpdatedAt.Equal(updated.CreatedAt) {
		t.Fatalf("updated: %+v", updated)
	}
	if after := do(t, s, "GET", "/api/events/42", "").Header().Get("ETag"); after == before {
		t.Fatalf("ETag unchanged by an update")
	}

	for _, bad := range []string{`{"title":""}`, `{"price":-1}`, `{"location":"no/slash"}`, `{"ticketsLeft":999999}`, `{"title":`, `[1]`, `{} {}`} {
		expectError(t, do(t, s, "PUT", "/api/events/42", bad, as(1)...), http.StatusBadRequest)
	}
	huge := `{"description":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	expectError(t, do(t, s, "PUT", "/api/events/42", huge, as(1)...), http.StatusRequestEntityTooLarge)
	expectError(t, do(t, s, "PUT", "/api/events/999", `{}`, as(1)...), http.StatusNotFound)
	expectError(t, do(t, s, "PUT", "/api/events/abc", `{}`, as(1)...), http.StatusBadRequest)
	expectError(t, do(t, s, "POST", "/api/events", `{"title":"No place"}`, as(1)...), http.StatusBadRequest)

	expectError(t, do(t, s, "DELETE", "/api/events/42", ""), http.StatusUnauthorized)
	rec = do(t, s, "DELETE", "/api/events/42", "", as(1)...)
	expect(t, rec, http.StatusOK)
	header(t, rec, HeaderInvalidate, "event:42, events:lists")
	expectError(t, do(t, s, "GET", "/api/events/42", ""), http.StatusNotFound)
	expectError(t, do(t, s, "DELETE", "/api/events/42", "", as(1)...), http.StatusNotFound)
	if rec := do(t, s, "GET", "/api/events/42", ""); rec.Header().Get(HeaderInvalidate) != "" {
		t.Fatalf("a failed or read-only request named tags to invalidate")
	}
}

func TestBuyTickets(t *testing.T) {
	s := newTestSim(t)
	left := decodeBody[detailResp](t, do(t, s, "GET", "/api/events/42", "")).Event.TicketsLeft

	expectError(t, do(t, s, "POST", "/api/events/42/tickets", `{"quantity":2}`), http.StatusUnauthorized)
	rec := do(t, s, "POST", "/api/events/42/tickets", `{"quantity":2}`, as(1)...)
	expect(t, rec, http.StatusCreated)
	header(t, rec, HeaderInvalidate, "event:42")
	p := decodeBody[struct{ Purchase purchase }](t, rec).Purchase
	if p.Quantity != 2 || p.UserID != 1 || p.TicketsLeft != left-2 || p.Amount <= 0 {
		t.Fatalf("purchase: %+v", p)
	}
	if got := decodeBody[detailResp](t, do(t, s, "GET", "/api/events/42", "")).Event.TicketsLeft; got != left-2 {
		t.Fatalf("ticketsLeft = %d after buying 2 of %d", got, left)
	}
	// No body buys one ticket.
	expect(t, do(t, s, "POST", "/api/events/42/tickets", "", as(1)...), http.StatusCreated)

	if msg := expectError(t, do(t, s, "POST", "/api/events/25/tickets", `{"quantity":1}`, as(1)...), http.StatusConflict); msg != "sold out" {
		t.Fatalf("sold-out message %q", msg)
	}
	expectError(t, do(t, s, "POST", "/api/events/10/tickets", `{}`, as(1)...), http.StatusConflict) // unpublished
	for _, q := range []string{"0", "-3", "11", `"two"`} {
		expectError(t, do(t, s, "POST", "/api/events/42/tickets", `{"quantity":`+q+`}`, as(1)...), http.StatusBadRequest)
	}
	expectError(t, do(t, s, "POST", "/api/events/999/tickets", `{}`, as(1)...), http.StatusNotFound)

	// Draining an event ends in 409, never in negative stock.
	expect(t, do(t, s, "PUT", "/api/events/43", `{"ticketsLeft":3}`, as(1)...), http.StatusOK)
	expect(t, do(t, s, "POST", "/api/events/43/tickets", `{"quantity":3}`, as(2)...), http.StatusCreated)
	expectError(t, do(t, s, "POST", "/api/events/43/tickets", `{"quantity":1}`, as(2)...), http.StatusConflict)
}
