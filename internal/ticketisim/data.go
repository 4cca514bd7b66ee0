package ticketisim

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Seed sizes. Event ids 1..seedEvents and user ids 1..seedUsers always exist
// after (re)seeding.
const (
	seedEvents = 200
	seedUsers  = 50
	// detailBodySize is the byte size of a seeded GET /api/events/{id} body;
	// the benchmarks' figures assume a 1.9 KB event detail.
	detailBodySize = 1900
)

// seedBase anchors every seeded timestamp so that two sims (or two runs)
// produce byte-identical bodies and ETags.
func seedBase() time.Time { return time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC) }

type city struct {
	slug, name, currency string
	venues               []string
}

// seedCities returns the cities events are spread over, in seeding order.
func seedCities() []city {
	return []city{
		{"lagos", "Lagos", "NGN", []string{"Eko Convention Centre", "Terra Kulture", "Muri Okunola Park"}},
		{"accra", "Accra", "GHS", []string{"Accra International Conference Centre", "Labadi Beach Hotel", "Alliance Francaise Accra"}},
		{"nairobi", "Nairobi", "KES", []string{"KICC", "Carnivore Grounds", "The Alchemist"}},
		{"abuja", "Abuja", "NGN", []string{"Eagle Square", "Transcorp Hilton Ballroom", "Jabi Lake Mall Arena"}},
		{"kigali", "Kigali", "RWF", []string{"Kigali Convention Centre", "BK Arena", "Norrsken House"}},
		{"cape-town", "Cape Town", "ZAR", []string{"CTICC", "Kirstenbosch Gardens", "V and A Waterfront Amphitheatre"}},
	}
}

type kind struct{ title, category string }

// seeder holds the tables the data set is generated from.
type seeder struct {
	base      time.Time
	cities    []city
	kinds     []kind
	sentences []string
}

func newSeeder() *seeder {
	return &seeder{base: seedBase(), cities: seedCities(), kinds: seedKinds(), sentences: seedSentences()}
}

func seedKinds() []kind {
	return []kind{
		{"Jazz Night", "music"}, {"Tech Meetup", "tech"}, {"Art Fair", "arts"},
		{"Food Festival", "food"}, {"Startup Pitch Day", "business"}, {"Football Fan Zone", "sports"},
		{"Afrobeats Live", "music"}, {"Comedy Special", "arts"},
	}
}

func seedSentences() []string {
	return []string{
		"Join us for an evening that brings together the best of the local scene and friends from across the continent.",
		"Doors open an hour before the first act so there is time to find a seat, grab a drink and meet other guests.",
		"Tickets include entry to every stage, a printed programme and access to the partner lounge until midnight.",
		"The venue is step free throughout, with accessible toilets and a quiet room staffed by trained volunteers.",
		"Food trucks from six neighbourhood kitchens will serve jollof, suya, nyama choma and vegetarian plates all night.",
		"Our organisers have run this series for five years and every edition has sold out in the final week.",
		"Parking is limited, so we recommend ride sharing or the shuttle that leaves the central station every twenty minutes.",
		"Children under twelve enter free with a paying adult; please bring a valid ID for every guest over eighteen.",
		"A portion of every ticket supports scholarships for young creatives and engineers in the host city.",
		"Refunds are available up to seven days before the event; transfers to a friend are free until the doors open.",
	}
}

// event is the stored event; it marshals as the detail view.
type event struct {
	ID           int       `json:"id"`
	Title        string    `json:"title"`
	Slug         string    `json:"slug"`
	Description  string    `json:"description"`
	Category     string    `json:"category"`
	Venue        string    `json:"venue"`
	Location     string    `json:"location"`
	OrganizerID  int       `json:"organizerId"`
	StartsAt     time.Time `json:"startsAt"`
	EndsAt       time.Time `json:"endsAt"`
	Price        int       `json:"price"`
	Currency     string    `json:"currency"`
	TicketsTotal int       `json:"ticketsTotal"`
	TicketsLeft  int       `json:"ticketsLeft"`
	Published    bool      `json:"published"`
	Trending     int       `json:"trending"`
	Featured     bool      `json:"featured"`
	ImageURL     string    `json:"imageUrl"`
	Tags         []string  `json:"tags"` // replaced, never mutated in place, so copies may share it
	CreatedAt    time.Time `json:"createdAt"`
	UpdatedAt    time.Time `json:"updatedAt"`
	Version      int       `json:"version"`
}

// eventSummary is an event as lists show it: no description, so a 20-item page
// stays a few KB like the real API's.
type eventSummary struct {
	ID          int       `json:"id"`
	Title       string    `json:"title"`
	Slug        string    `json:"slug"`
	Category    string    `json:"category"`
	Venue       string    `json:"venue"`
	Location    string    `json:"location"`
	OrganizerID int       `json:"organizerId"`
	StartsAt    time.Time `json:"startsAt"`
	Price       int       `json:"price"`
	Currency    string    `json:"currency"`
	TicketsLeft int       `json:"ticketsLeft"`
	Trending    int       `json:"trending"`
	Featured    bool      `json:"featured"`
	ImageURL    string    `json:"imageUrl"`
	UpdatedAt   time.Time `json:"updatedAt"`
	Version     int       `json:"version"`
}

func (e *event) summary() eventSummary {
	return eventSummary{
		ID: e.ID, Title: e.Title, Slug: e.Slug, Category: e.Category, Venue: e.Venue,
		Location: e.Location, OrganizerID: e.OrganizerID, StartsAt: e.StartsAt,
		Price: e.Price, Currency: e.Currency, TicketsLeft: e.TicketsLeft,
		Trending: e.Trending, Featured: e.Featured, ImageURL: e.ImageURL,
		UpdatedAt: e.UpdatedAt, Version: e.Version,
	}
}

type user struct {
	ID          int
	Username    string
	Password    string
	Email       string
	DisplayName string
	Bio         string
	Location    string
	IsVerified  bool
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// profileView is what anyone may see of a user.
type profileView struct {
	ID          int       `json:"id"`
	Username    string    `json:"username"`
	DisplayName string    `json:"displayName"`
	Bio         string    `json:"bio"`
	Location    string    `json:"location"`
	AvatarURL   string    `json:"avatarUrl"`
	IsVerified  bool      `json:"isVerified"`
	CreatedAt   time.Time `json:"createdAt"`
	UpdatedAt   time.Time `json:"updatedAt"`
}

// meView is what the user sees of themself; the password never leaves the store.
type meView struct {
	profileView
	Email string `json:"email"`
}

func (u *user) profile() profileView {
	return profileView{
		ID: u.ID, Username: u.Username, DisplayName: u.DisplayName, Bio: u.Bio,
		Location: u.Location, AvatarURL: fmt.Sprintf("https://cdn.ticketi.test/avatars/%d.png", u.ID),
		IsVerified: u.IsVerified, CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt,
	}
}

func (u *user) me() meView { return meView{profileView: u.profile(), Email: u.Email} }

type payment struct {
	Reference string    `json:"reference"`
	UserID    int       `json:"-"`
	EventID   int       `json:"eventId"`
	Quantity  int       `json:"quantity"`
	Amount    int       `json:"amount"`
	Currency  string    `json:"currency"`
	Status    string    `json:"status"`
	PaidAt    time.Time `json:"paidAt"`
}

// state is one generation of the data set; reseeding swaps in a fresh one.
type state struct {
	events    map[int]*event
	order     []int // ascending event ids, so lists need no sort by id
	nextEvent int
	users     map[int]*user
	byName    map[string]int // lower-cased username -> id
	nextUser  int
	followers map[int]map[int]struct{} // followee -> set of followers
	payments  map[string]*payment
}

func seedState() *state {
	st := &state{
		events:    make(map[int]*event, seedEvents),
		users:     make(map[int]*user, seedUsers),
		byName:    make(map[string]int, seedUsers),
		followers: make(map[int]map[int]struct{}, seedUsers),
		payments:  make(map[string]*payment),
		nextEvent: seedEvents + 1,
		nextUser:  seedUsers + 1,
	}
	sd := newSeeder()
	for id := 1; id <= seedUsers; id++ {
		u := sd.user(id)
		st.users[id] = u
		st.byName[strings.ToLower(u.Username)] = id
		st.followers[id] = make(map[int]struct{})
	}
	// A sparse, deterministic follow graph: u follows v when u+v is a multiple of 5.
	for u := 1; u <= seedUsers; u++ {
		for v := 1; v <= seedUsers; v++ {
			if u != v && (u+v)%5 == 0 {
				st.followers[v][u] = struct{}{}
			}
		}
	}
	for id := 1; id <= seedEvents; id++ {
		st.events[id] = sd.event(id)
		st.order = append(st.order, id)
	}
	return st
}

func (sd *seeder) city(id int) city { return sd.cities[(id-1)%len(sd.cities)] }

func (sd *seeder) user(id int) *user {
	c := sd.city(id)
	u := &user{
		ID:          id,
		Username:    fmt.Sprintf("user%d", id),
		Password:    fmt.Sprintf("password%d", id),
		DisplayName: fmt.Sprintf("User %d", id),
		IsVerified:  id%3 == 0,
		Location:    c.slug,
		CreatedAt:   sd.base.Add(-time.Duration(seedUsers-id+1) * 24 * time.Hour),
	}
	switch id {
	case 1:
		u.Username, u.Password, u.DisplayName, u.IsVerified = "alice", "secret1", "Alice Adeyemi", true
	case 2:
		u.Username, u.Password, u.DisplayName, u.IsVerified = "bob", "secret2", "Bob Mensah", true
	}
	u.Email = u.Username + "@example.test"
	u.Bio = "Event lover based in " + c.name + "."
	u.UpdatedAt = u.CreatedAt
	return u
}

func (sd *seeder) event(id int) *event {
	c := sd.city(id)
	kind := sd.kinds[id%len(sd.kinds)]
	title := fmt.Sprintf("%s %s %d", c.name, kind.title, id)
	total := 100 + id*53%400
	left := total - id*31%(total/2) // at least half left, so tests can buy freely
	if id%25 == 0 {
		left = 0 // a few sold-out events for 409 paths
	}
	starts := sd.base.Add(time.Duration(id*37%180)*24*time.Hour + 19*time.Hour)
	created := sd.base.Add(-time.Duration(seedEvents-id+1) * time.Hour)
	e := &event{
		ID:           id,
		Title:        title,
		Slug:         slugify(title),
		Category:     kind.category,
		Venue:        c.venues[id%len(c.venues)],
		Location:     c.slug,
		OrganizerID:  (id-1)%20 + 1, // users 1..20 organise; 21..50 have no events
		StartsAt:     starts,
		EndsAt:       starts.Add(4 * time.Hour),
		Price:        1000 + id*137%20*500,
		Currency:     c.currency,
		TicketsTotal: total,
		TicketsLeft:  left,
		Published:    id%10 != 0,
		Trending:     id * 7919 % 1000,
		Featured:     id%17 == 0,
		ImageURL:     fmt.Sprintf("https://cdn.ticketi.test/events/%d.jpg", id),
		Tags:         []string{kind.category, c.slug},
		CreatedAt:    created,
		UpdatedAt:    created,
		Version:      1,
	}
	e.Description = sd.description(id, detailBodySize-detailSizeWithout(e))
	return e
}

// detailSizeWithout is the detail body's size with an empty description; the
// seed text is plain ASCII without characters JSON escapes, so the final body
// size is exact.
func detailSizeWithout(e *event) int {
	cp := *e
	cp.Description = ""
	b, _ := json.Marshal(detailBody{Event: &cp})
	return len(b)
}

func (sd *seeder) description(id, n int) string {
	if n <= 0 {
		return ""
	}
	var b strings.Builder
	for i := id; b.Len() < n; i++ {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(sd.sentences[i%len(sd.sentences)])
	}
	// End on a full stop rather than mid-word padding.
	return b.String()[:n-1] + "."
}

func slugify(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

// detailBody is the GET /api/events/{id} envelope.
type detailBody struct {
	Event *event `json:"event"`
}
