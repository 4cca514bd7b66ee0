package ticketisim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

func (s *Sim) registerAuthRoutes() {
	s.api("POST /api/auth/login", s.login)
	s.api("POST /api/auth/logout", s.logout)
	s.api("POST /api/auth/register", s.register)
}

func (s *Sim) registerPaymentRoutes() {
	s.api("POST /api/payments/initialize", s.initPayment)
	s.api("GET /api/payments/verify/{reference}", s.verifyPayment)
}

// Identity is the JSON carried by the X-Ticketi-Identity response header. Its
// field order is fixed so the header is byte-stable for tests.
type Identity struct {
	UserID     string `json:"userId"`
	Username   string `json:"username"`
	IsVerified bool   `json:"isVerified"`
}

// setIdentity hands the logged-in user to the edge, which creates its session
// from the header and strips it before the client sees the response.
func setIdentity(w http.ResponseWriter, u user) {
	b, _ := json.Marshal(Identity{UserID: strconv.Itoa(u.ID), Username: u.Username, IsVerified: u.IsVerified})
	w.Header().Set(HeaderIdentity, string(b))
}

func (s *Sim) login(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	if in.Username == "" || in.Password == "" {
		fail(w, r, errf(http.StatusBadRequest, "username and password are required"))
		return
	}
	u, ok := s.data.login(in.Username, in.Password)
	if !ok {
		fail(w, r, errf(http.StatusUnauthorized, "invalid credentials"))
		return
	}
	setIdentity(w, u)
	writeJSON(w, r, http.StatusOK, ccPrivate, userBody[meView]{u.me()})
}

// logout has nothing to forget: sessions live in the edge, which destroys its
// own on seeing this route succeed.
func (s *Sim) logout(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r, http.StatusOK, ccPrivate, struct {
		OK bool `json:"ok"`
	}{true})
}

type registerInput struct {
	Username    string `json:"username"`
	Password    string `json:"password"`
	Email       string `json:"email"`
	DisplayName string `json:"displayName"`
}

func (in *registerInput) validate() error {
	bad := func(msg string) error { return errf(http.StatusBadRequest, msg) }
	if n := len(in.Username); n < 3 || n > 32 || strings.IndexFunc(in.Username, notUsernameRune) >= 0 {
		return bad("username must be 3 to 32 letters, digits or underscores")
	}
	if n := len(in.Password); n < 6 || n > 128 {
		return bad("password must be 6 to 128 characters")
	}
	if in.Email != "" && (len(in.Email) > 254 || !strings.Contains(in.Email, "@")) {
		return bad("invalid email")
	}
	in.DisplayName = strings.TrimSpace(in.DisplayName)
	if utf8.RuneCountInString(in.DisplayName) > 64 {
		return bad("displayName must be at most 64 characters")
	}
	return nil
}

func notUsernameRune(r rune) bool {
	return (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_'
}

func (s *Sim) register(w http.ResponseWriter, r *http.Request) {
	var in registerInput
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	if err := in.validate(); err != nil {
		fail(w, r, err)
		return
	}
	u, err := s.data.register(in)
	if err != nil {
		fail(w, r, err)
		return
	}
	setIdentity(w, u)
	writeJSON(w, r, http.StatusCreated, ccPrivate, userBody[meView]{u.me()})
}

func (s *Sim) initPayment(w http.ResponseWriter, r *http.Request) {
	uid, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	var in struct {
		EventID  int  `json:"eventId"`
		Quantity *int `json:"quantity"`
	}
	if err := decodeJSON(w, r, &in); err != nil {
		fail(w, r, err)
		return
	}
	if in.EventID < 1 {
		fail(w, r, errf(http.StatusBadRequest, "eventId is required"))
		return
	}
	qty, err := quantity(in.Quantity)
	if err != nil {
		fail(w, r, err)
		return
	}
	p, err := s.data.initPayment(uid, in.EventID, qty)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, ccPrivate, struct {
		Reference        string `json:"reference"`
		AuthorizationURL string `json:"authorizationUrl"`
		Amount           int    `json:"amount"`
		Currency         string `json:"currency"`
	}{p.Reference, "https://checkout.ticketi.test/pay/" + p.Reference, p.Amount, p.Currency})
}

// verifyPayment reports the gateway's verdict; the sim's gateway always
// approves. Only the payer may see it, and no card data is ever stored.
func (s *Sim) verifyPayment(w http.ResponseWriter, r *http.Request) {
	uid, err := identity(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	ref := r.PathValue("reference")
	if !strings.HasPrefix(ref, "ref_") || len(ref) > 64 {
		fail(w, r, errf(http.StatusBadRequest, "invalid reference"))
		return
	}
	p, err := s.data.payment(ref, uid)
	if err != nil {
		fail(w, r, err)
		return
	}
	// private but storable: the payer may see a per-user cached copy
	// (the seed caches verifications per user for 300 s).
	writeJSON(w, r, http.StatusOK, ccPerUser, struct {
		Payment payment `json:"payment"`
	}{p})
}
