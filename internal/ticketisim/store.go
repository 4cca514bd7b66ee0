package ticketisim

import (
	"cmp"
	"crypto/subtle"
	"fmt"
	"hash/fnv"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

var (
	errEventNotFound   = errf(http.StatusNotFound, "event not found")
	errUserNotFound    = errf(http.StatusNotFound, "user not found")
	errPaymentNotFound = errf(http.StatusNotFound, "payment not found")
	errSoldOut         = errf(http.StatusConflict, "sold out")
	errNotEnough       = errf(http.StatusConflict, "not enough tickets left")
	errNotOnSale       = errf(http.StatusConflict, "event is not on sale")
)

// store is the sim's database. Handlers get copies, never pointers into it,
// so encoding a response needs no lock.
type store struct {
	mu       sync.RWMutex
	st       *state
	paySeq   int               // survives reseeding so references stay unique per process
	currency map[string]string // city slug -> currency; read-only after newStore
}

func newStore() *store {
	s := &store{st: seedState(), currency: make(map[string]string)}
	for _, c := range seedCities() {
		s.currency[c.slug] = c.currency
	}
	return s
}

func (s *store) reseed() {
	fresh := seedState()
	s.mu.Lock()
	s.st = fresh
	s.mu.Unlock()
}

func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

func (s *store) event(id int) (event, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.st.events[id]
	if !ok {
		return event{}, errEventNotFound
	}
	return *e, nil
}

// selectEvents returns summaries of the published events keep accepts, by id.
func (s *store) selectEvents(keep func(*event) bool) []eventSummary {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []eventSummary
	for _, id := range s.st.order {
		if e := s.st.events[id]; e.Published && keep(e) {
			out = append(out, e.summary())
		}
	}
	return out
}

func (s *store) published() []eventSummary {
	return s.selectEvents(func(*event) bool { return true })
}

func (s *store) trending() []eventSummary {
	out := s.published()
	slices.SortStableFunc(out, func(a, b eventSummary) int { return cmp.Compare(b.Trending, a.Trending) })
	return out
}

func (s *store) featured() []eventSummary {
	return s.selectEvents(func(e *event) bool { return e.Featured })
}

func (s *store) byLocation(loc string) []eventSummary {
	return s.selectEvents(func(e *event) bool { return e.Location == loc })
}

// byOrganizer fails for unknown users so that a typo is a 404, not an empty page.
func (s *store) byOrganizer(uid int) ([]eventSummary, error) {
	if _, err := s.user(uid); err != nil {
		return nil, err
	}
	return s.selectEvents(func(e *event) bool { return e.OrganizerID == uid }), nil
}

func (s *store) createEvent(in eventInput, organizer int) (event, error) {
	e := event{
		OrganizerID:  organizer,
		Category:     "general",
		Venue:        "To be announced",
		StartsAt:     now().Add(30 * 24 * time.Hour).Truncate(time.Hour),
		TicketsTotal: 100,
		Published:    true,
	}
	e.EndsAt = e.StartsAt.Add(4 * time.Hour)
	e.TicketsLeft = -1 // "same as total" unless the input says otherwise
	if err := in.apply(&e); err != nil {
		return event{}, err
	}
	if e.Title == "" || e.Location == "" {
		return event{}, errf(http.StatusBadRequest, "title and location are required")
	}
	if e.TicketsLeft < 0 {
		e.TicketsLeft = e.TicketsTotal
	}
	if err := e.check(); err != nil {
		return event{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.ID = s.st.nextEvent
	s.st.nextEvent++
	e.Slug = slugify(e.Title)
	e.Currency = cmp.Or(s.currency[e.Location], "NGN")
	e.ImageURL = fmt.Sprintf("https://cdn.ticketi.test/events/%d.jpg", e.ID)
	e.Tags = []string{e.Category, e.Location}
	e.CreatedAt = now()
	e.UpdatedAt = e.CreatedAt
	e.Version = 1
	s.st.events[e.ID] = &e
	s.st.order = append(s.st.order, e.ID)
	return e, nil
}

func (s *store) updateEvent(id int, in eventInput) (event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.st.events[id]
	if !ok {
		return event{}, errEventNotFound
	}
	e := *cur
	if err := in.apply(&e); err != nil {
		return event{}, err
	}
	if err := e.check(); err != nil {
		return event{}, err
	}
	e.Slug = slugify(e.Title)
	e.Currency = cmp.Or(s.currency[e.Location], e.Currency)
	e.Tags = []string{e.Category, e.Location}
	e.UpdatedAt = now()
	e.Version++
	*cur = e
	return e, nil
}

func (s *store) deleteEvent(id int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st.events[id]; !ok {
		return errEventNotFound
	}
	delete(s.st.events, id)
	s.st.order = slices.DeleteFunc(s.st.order, func(v int) bool { return v == id })
	return nil
}

// purchase is the answer to a ticket purchase.
type purchase struct {
	EventID     int `json:"eventId"`
	UserID      int `json:"userId"`
	Quantity    int `json:"quantity"`
	Amount      int `json:"amount"`
	TicketsLeft int `json:"ticketsLeft"`
}

func (s *store) buyTickets(id, uid, qty int) (purchase, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.st.events[id]
	if !ok {
		return purchase{}, errEventNotFound
	}
	if err := onSale(e, qty); err != nil {
		return purchase{}, err
	}
	e.TicketsLeft -= qty
	e.UpdatedAt = now()
	e.Version++
	return purchase{EventID: id, UserID: uid, Quantity: qty, Amount: qty * e.Price, TicketsLeft: e.TicketsLeft}, nil
}

func onSale(e *event, qty int) error {
	switch {
	case !e.Published:
		return errNotOnSale
	case e.TicketsLeft == 0:
		return errSoldOut
	case e.TicketsLeft < qty:
		return errNotEnough
	}
	return nil
}

func (s *store) user(id int) (user, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.st.users[id]
	if !ok {
		return user{}, errUserNotFound
	}
	return *u, nil
}

func (s *store) followerCount(id int) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.st.followers[id]
	if !ok {
		return 0, errUserNotFound
	}
	return len(f), nil
}

// setFollow makes follower follow (or unfollow) target; repeating it is a no-op.
func (s *store) setFollow(target, follower int, follow bool) (int, error) {
	if target == follower {
		return 0, errf(http.StatusBadRequest, "cannot follow yourself")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.st.followers[target]
	if !ok {
		return 0, errUserNotFound
	}
	if follow {
		f[follower] = struct{}{}
	} else {
		delete(f, follower)
	}
	return len(f), nil
}

func (s *store) updateUser(id int, displayName, bio *string) (user, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.st.users[id]
	if !ok {
		return user{}, errUserNotFound
	}
	if displayName != nil {
		u.DisplayName = *displayName
	}
	if bio != nil {
		u.Bio = *bio
	}
	u.UpdatedAt = now()
	return *u, nil
}

func (s *store) login(username, password string) (user, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.st.byName[strings.ToLower(username)]
	if !ok {
		return user{}, false
	}
	u := s.st.users[id]
	return *u, subtle.ConstantTimeCompare([]byte(u.Password), []byte(password)) == 1
}

func (s *store) register(in registerInput) (user, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(in.Username)
	if _, taken := s.st.byName[key]; taken {
		return user{}, errf(http.StatusConflict, "username already taken")
	}
	t := now()
	u := &user{
		ID:          s.st.nextUser,
		Username:    in.Username,
		Password:    in.Password,
		Email:       in.Email,
		DisplayName: cmp.Or(in.DisplayName, in.Username),
		CreatedAt:   t,
		UpdatedAt:   t,
	}
	s.st.nextUser++
	s.st.users[u.ID] = u
	s.st.byName[key] = u.ID
	s.st.followers[u.ID] = make(map[int]struct{})
	return *u, nil
}

// initPayment reserves nothing: like the real gateway flow, tickets are only
// taken by the purchase call, so a payment can still fail at verification.
func (s *store) initPayment(uid, eventID, qty int) (payment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.st.events[eventID]
	if !ok {
		return payment{}, errEventNotFound
	}
	if err := onSale(e, qty); err != nil {
		return payment{}, err
	}
	s.paySeq++
	h := fnv.New32a()
	fmt.Fprintf(h, "%d/%d/%d", uid, eventID, s.paySeq)
	p := &payment{
		Reference: fmt.Sprintf("ref_%06d%08x", s.paySeq, h.Sum32()),
		UserID:    uid,
		EventID:   eventID,
		Quantity:  qty,
		Amount:    qty * e.Price,
		Currency:  e.Currency,
		Status:    "success",
		PaidAt:    now(),
	}
	s.st.payments[p.Reference] = p
	return *p, nil
}

// payment returns a payment only to its owner: anyone else gets the same 404
// as for an unknown reference, so references cannot be probed.
func (s *store) payment(ref string, uid int) (payment, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.st.payments[ref]
	if !ok || p.UserID != uid {
		return payment{}, errPaymentNotFound
	}
	return *p, nil
}
