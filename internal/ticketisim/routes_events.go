package ticketisim

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Cache tags named in X-Ticketi-Invalidate. tagEventLists covers every
// event-list key (events:published|trending|location|organizer:*,
// events:featured and user:events:*), since one event change can move it
// between pages of any of them.
const tagEventLists = "events:lists"

func tagEvent(id int) string { return "event:" + strconv.Itoa(id) }

const maxTicketsPerOrder = 10

func (s *Sim) registerEventRoutes() {
	s.api("GET /api/events/{id}", s.getEvent)
	s.api("GET /api/events/published", s.listPublished)
	s.api("GET /api/events/trending", s.listTrending)
	s.api("GET /api/events/featured", s.listFeatured)
	s.api("GET /api/events/location/{location}", s.listByLocation)
	s.api("GET /api/events/organizer/{userId}", s.listByOrganizer)
	s.api("POST /api/events", s.createEvent)
	s.api("PUT /api/events/{id}", s.updateEvent)
	s.api("DELETE /api/events/{id}", s.deleteEvent)
	s.api("POST /api/events/{id}/tickets", s.buyTickets)
}

func (s *Sim) getEvent(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id", "event")
	if err != nil {
		fail(w, r, err)
		return
	}
	e, err := s.data.event(id)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, ccPublic, detailBody{Event: &e})
}

// servePage answers a paginated list; list is only computed for a valid page.
func servePage(w http.ResponseWriter, r *http.Request, list func() ([]eventSummary, error), decorate func(*listBody)) {
	page, err := parsePage(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	all, err := list()
	if err != nil {
		fail(w, r, err)
		return
	}
	body := newListBody(all, page)
	if decorate != nil {
		decorate(&body)
	}
	writeJSON(w, r, http.StatusOK, ccPublic, body)
}

func noErr(f func() []eventSummary) func() ([]eventSummary, error) {
	return func() ([]eventSummary, error) { return f(), nil }
}

func (s *Sim) listPublished(w http.ResponseWriter, r *http.Request) {
	servePage(w, r, noErr(s.data.published), nil)
}

func (s *Sim) listTrending(w http.ResponseWriter, r *http.Request) {
	servePage(w, r, noErr(s.data.trending), nil)
}

func (s *Sim) listFeatured(w http.ResponseWriter, r *http.Request) {
	all := s.data.featured()
	writeJSON(w, r, http.StatusOK, ccPublic, struct {
		Events []eventSummary `json:"events"`
		Total  int            `json:"total"`
	}{Events: append([]eventSummary{}, all...), Total: len(all)})
}

func (s *Sim) listByLocation(w http.ResponseWriter, r *http.Request) {
	loc := strings.ToLower(r.PathValue("location"))
	if !validSlug(loc) {
		fail(w, r, errf(http.StatusBadRequest, "invalid location"))
		return
	}
	servePage(w, r, noErr(func() []eventSummary { return s.data.byLocation(loc) }),
		func(b *listBody) { b.Location = loc })
}

func (s *Sim) listByOrganizer(w http.ResponseWriter, r *http.Request) {
	uid, err := pathID(r, "userId", "user")
	if err != nil {
		fail(w, r, err)
		return
	}
	servePage(w, r, func() ([]eventSummary, error) { return s.data.byOrganizer(uid) },
		func(b *listBody) { b.OrganizerID = uid })
}

func (s *Sim) createEvent(w http.ResponseWriter, r *http.Request) {
	uid, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	var in eventInput
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	e, err := s.data.createEvent(in, uid)
	if err != nil {
		fail(w, r, err)
		return
	}
	invalidate(w, tagEventLists)
	w.Header().Set("Location", "/api/events/"+strconv.Itoa(e.ID))
	writeJSON(w, r, http.StatusCreated, ccNoStore, detailBody{Event: &e})
}

// updateEvent does not check ownership: the edge's tests exercise caching and
// invalidation, and any logged-in demo user may edit any event.
func (s *Sim) updateEvent(w http.ResponseWriter, r *http.Request) {
	id, err := authAndID(r, "id", "event")
	if err != nil {
		fail(w, r, err)
		return
	}
	var in eventInput
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	e, err := s.data.updateEvent(id, in)
	if err != nil {
		fail(w, r, err)
		return
	}
	invalidate(w, tagEvent(id), tagEventLists)
	writeJSON(w, r, http.StatusOK, ccNoStore, detailBody{Event: &e})
}

func (s *Sim) deleteEvent(w http.ResponseWriter, r *http.Request) {
	id, err := authAndID(r, "id", "event")
	if err != nil {
		fail(w, r, err)
		return
	}
	if err := s.data.deleteEvent(id); err != nil {
		fail(w, r, err)
		return
	}
	invalidate(w, tagEvent(id), tagEventLists)
	writeJSON(w, r, http.StatusOK, ccNoStore, struct {
		OK bool `json:"ok"`
		ID int  `json:"id"`
	}{true, id})
}

func (s *Sim) buyTickets(w http.ResponseWriter, r *http.Request) {
	uid, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	id, err := pathID(r, "id", "event")
	if err != nil {
		fail(w, r, err)
		return
	}
	var in struct {
		Quantity *int `json:"quantity"`
	}
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	qty, err := quantity(in.Quantity)
	if err != nil {
		fail(w, r, err)
		return
	}
	p, err := s.data.buyTickets(id, uid, qty)
	if err != nil {
		fail(w, r, err)
		return
	}
	// Only the detail shows the exact count; lists may lag by their short TTL.
	invalidate(w, tagEvent(id))
	writeJSON(w, r, http.StatusCreated, ccNoStore, struct {
		Purchase purchase `json:"purchase"`
	}{p})
}

func authAndID(r *http.Request, name, what string) (int, error) {
	if _, err := identity(r); err != nil {
		return 0, err
	}
	return pathID(r, name, what)
}

// quantity defaults an absent quantity to one ticket.
func quantity(q *int) (int, error) {
	if q == nil {
		return 1, nil
	}
	if *q < 1 || *q > maxTicketsPerOrder {
		return 0, errf(http.StatusBadRequest, "quantity must be between 1 and "+strconv.Itoa(maxTicketsPerOrder))
	}
	return *q, nil
}

// eventInput is the writable part of an event; absent fields stay unchanged.
type eventInput struct {
	Title        *string    `json:"title"`
	Description  *string    `json:"description"`
	Category     *string    `json:"category"`
	Venue        *string    `json:"venue"`
	Location     *string    `json:"location"`
	StartsAt     *time.Time `json:"startsAt"`
	EndsAt       *time.Time `json:"endsAt"`
	Price        *int       `json:"price"`
	TicketsTotal *int       `json:"ticketsTotal"`
	TicketsLeft  *int       `json:"ticketsLeft"`
	Published    *bool      `json:"published"`
	Featured     *bool      `json:"featured"`
	Trending     *int       `json:"trending"`
}

func (in *eventInput) apply(e *event) error {
	bad := func(msg string) error { return errf(http.StatusBadRequest, msg) }
	if in.Title != nil {
		t := strings.TrimSpace(*in.Title)
		if t == "" || len(t) > 200 {
			return bad("title must be 1 to 200 characters")
		}
		e.Title = t
	}
	if in.Description != nil {
		if len(*in.Description) > 20000 {
			return bad("description too long")
		}
		e.Description = *in.Description
	}
	if in.Category != nil {
		c := strings.ToLower(strings.TrimSpace(*in.Category))
		if !validSlug(c) {
			return bad("invalid category")
		}
		e.Category = c
	}
	if in.Venue != nil {
		v := strings.TrimSpace(*in.Venue)
		if v == "" || len(v) > 200 {
			return bad("venue must be 1 to 200 characters")
		}
		e.Venue = v
	}
	if in.Location != nil {
		l := strings.ToLower(strings.TrimSpace(*in.Location))
		if !validSlug(l) {
			return bad("invalid location")
		}
		e.Location = l
	}
	if in.StartsAt != nil {
		e.StartsAt = in.StartsAt.UTC()
		if in.EndsAt == nil {
			e.EndsAt = e.StartsAt.Add(4 * time.Hour)
		}
	}
	if in.EndsAt != nil {
		e.EndsAt = in.EndsAt.UTC()
	}
	for _, f := range []struct {
		v, dst *int
		max    int
		name   string
	}{
		{in.Price, &e.Price, 100_000_000, "price"},
		{in.TicketsTotal, &e.TicketsTotal, 1_000_000, "ticketsTotal"},
		{in.TicketsLeft, &e.TicketsLeft, 1_000_000, "ticketsLeft"},
		{in.Trending, &e.Trending, 1_000_000, "trending"},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 || *f.v > f.max {
			return bad(f.name + " out of range")
		}
		*f.dst = *f.v
	}
	if in.Published != nil {
		e.Published = *in.Published
	}
	if in.Featured != nil {
		e.Featured = *in.Featured
	}
	return nil
}

// check enforces the invariants that span fields.
func (e *event) check() error {
	if e.TicketsLeft > e.TicketsTotal {
		return errf(http.StatusBadRequest, "ticketsLeft exceeds ticketsTotal")
	}
	if e.EndsAt.Before(e.StartsAt) {
		return errf(http.StatusBadRequest, "endsAt is before startsAt")
	}
	return nil
}

// validSlug keeps path segments and cache-key parts to a safe alphabet.
func validSlug(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
