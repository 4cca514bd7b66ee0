package sessionauth

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ticketi/edge/internal/edgehttp"
)

// retryAfter is what a 503 during a Redis outage suggests (seconds).
const retryAfter = "5"

// Next is the rest of the handler chain (edgehttp.Next, shared by the
// engines); caddyhttp.Handler satisfies it.
type Next = edgehttp.Next

// NextFunc adapts a function to Next.
type NextFunc = edgehttp.NextFunc

// RequestMatcher reports whether a request is on a set of routes. The
// Caddy glue passes its path matchers, so routes match exactly as Caddy
// matches them.
type RequestMatcher func(*http.Request) bool

// HTTPObserver receives the handler's events (the glue's metrics). Labels
// are Result.String() only.
type HTTPObserver interface {
	Checked(Result)
	LoggedIn()
	LoggedOut()
}

// HTTPOptions configure a Handler. Every name must be set: SetDefaults
// fills the documented defaults (options.go).
type HTTPOptions struct {
	// The session cookie: SameSite, HttpOnly, and Secure unless
	// InsecureCookie. It lives for MaxAge (the absolute timeout).
	CookieName, CookiePath, CookieDomain string
	SameSite                             http.SameSite
	InsecureCookie                       bool
	MaxAge                               time.Duration
	// IdentityHeader is the upstream's login hand-off header (JSON
	// identity); it never reaches a client. UserIDHeader, UsernameHeader and
	// VerifiedHeader are the trusted headers sent upstream.
	IdentityHeader, UserIDHeader, UsernameHeader, VerifiedHeader string
	// Login and Logout match the POST routes whose 2xx answer carries the
	// identity (a session is created) and that end the session.
	Login, Logout RequestMatcher
	// Protect matches routes that need a session, any method (nil: none).
	// ProtectMutations makes every POST/PUT/PATCH/DELETE need one, except
	// on MutationsExcept (nil: no exception).
	Protect          RequestMatcher
	ProtectMutations bool
	MutationsExcept  RequestMatcher
	// LoginRedirect: browsers (Accept: text/html) without a session on a
	// protected GET/HEAD are sent here (with ?next=) instead of a 401.
	LoginRedirect string
	// ClientIP is the client address from trusted-proxy logic (never a raw
	// X-Forwarded-For); nil or "" records none.
	ClientIP func(*http.Request) string
	// OnIdentity, when set, is told the user of each request with a valid
	// session (the glue sets placeholders for later handlers).
	OnIdentity func(*http.Request, Session)
	// Observer, when set, receives the events.
	Observer HTTPObserver
	// Logger; never given tokens, only HashForLog values.
	Logger *zap.Logger
}

// Handler is the session engine's HTTP entry point: it identifies the
// request's session, sends the user upstream as trusted headers, answers
// protected routes without one, ends sessions on logout and turns the
// upstream's login answer into a session and cookie.
type Handler struct {
	m     *Manager
	o     HTTPOptions
	strip []string
}

// NewHandler returns the Handler for m.
func NewHandler(m *Manager, o HTTPOptions) (*Handler, error) {
	if m == nil {
		return nil, errors.New("sessionauth: NewHandler needs a Manager")
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	never := func(*http.Request) bool { return false }
	if o.Login == nil {
		o.Login = never
	}
	if o.Logout == nil {
		o.Logout = never
	}
	return &Handler{m: m, o: o, strip: []string{o.UserIDHeader, o.UsernameHeader, o.VerifiedHeader, o.IdentityHeader}}, nil
}

// Handle serves r: strip, identify, logout, protect, then next with the
// login hand-off writer.
func (h *Handler) Handle(w http.ResponseWriter, r *http.Request, next Next) error {
	// Whatever the client claims about identity never reaches the upstream,
	// in any letter case or with '_' for '-'.
	StripIdentityHeaders(r.Header, h.strip)
	meta := Meta{UserAgent: r.UserAgent()}
	if h.o.ClientIP != nil {
		meta.IP = h.o.ClientIP(r)
	}
	token, fromCookie, sess, res := h.identify(r, meta)
	if h.o.Observer != nil {
		h.o.Observer.Checked(res)
	}
	if res == Valid {
		h.setIdentity(r, sess)
	}

	if r.Method == http.MethodPost && h.o.Logout(r) {
		if token != "" {
			if err := h.m.Destroy(r.Context(), token); err != nil {
				h.o.Logger.Warn("logout could not reach the session store: refused here now, queued until redis is back, refused by the other edges within outage_grace",
					zap.String("session", HashForLog(token)), zap.Error(err))
			}
			if h.o.Observer != nil {
				h.o.Observer.LoggedOut()
			}
		}
		http.SetCookie(w, h.clearCookie())
	} else if fromCookie && (res == Invalid || res == Expired || res == Unknown) {
		// A dead cookie is removed so the browser stops sending it.
		http.SetCookie(w, h.clearCookie())
	}

	if res != Valid && h.protected(r) {
		return h.deny(w, r, res)
	}
	login := r.Method == http.MethodPost && h.o.Login(r)
	return next.ServeHTTP(&loginWriter{ResponseWriter: w, h: h, r: r, meta: meta, login: login}, r)
}

// identify finds the request's session: our signed cookie, a bearer
// token (the same signed value), or an express-session cookie.
func (h *Handler) identify(r *http.Request, meta Meta) (token string, fromCookie bool, sess Session, res Result) {
	ctx := r.Context()
	value := ""
	if c, err := r.Cookie(h.o.CookieName); err == nil {
		value, fromCookie = c.Value, true
	} else if auth := r.Header.Get("Authorization"); len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		value = strings.TrimSpace(auth[7:])
	}
	if value != "" {
		tok, ok := h.m.VerifyCookie(value)
		if !ok {
			// Forged or mangled: no Redis call needed to say no.
			return "", fromCookie, sess, Invalid
		}
		sess, res = h.m.Validate(ctx, tok, meta)
		return tok, fromCookie, sess, res
	}
	if h.m.express != nil { // the Manager validates express-session cookies
		if c, err := r.Cookie(h.m.express.cookie); err == nil {
			sess, res = h.m.ValidateExpress(ctx, c.Value)
			return "", false, sess, res
		}
	}
	return "", false, sess, Missing
}

// setIdentity publishes the user to later handlers and to the upstream.
func (h *Handler) setIdentity(r *http.Request, sess Session) {
	if h.o.OnIdentity != nil {
		h.o.OnIdentity(r, sess)
	}
	r.Header.Set(h.o.UserIDHeader, sess.UserID)
	if sess.Username != "" {
		r.Header.Set(h.o.UsernameHeader, sess.Username)
	}
	r.Header.Set(h.o.VerifiedHeader, strconv.FormatBool(sess.IsVerified))
}

// protected reports whether r needs a session.
func (h *Handler) protected(r *http.Request) bool {
	if h.o.Protect != nil && h.o.Protect(r) {
		return true
	}
	if !h.o.ProtectMutations {
		return false
	}
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return h.o.MutationsExcept == nil || !h.o.MutationsExcept(r)
	}
	return false
}

// deny answers a protected request without a valid session: 503 when the
// store is unreachable (never a false 401), else 401 JSON or, for a
// browser, a redirect to the login page.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, res Result) error {
	hdr := w.Header()
	if res == Unavailable {
		hdr.Set("Retry-After", retryAfter)
		return writeJSONError(w, http.StatusServiceUnavailable, "sessions are temporarily unavailable; try again shortly")
	}
	if h.o.LoginRedirect != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		strings.Contains(r.Header.Get("Accept"), "text/html") {
		hdr.Set("Location", h.o.LoginRedirect+"?next="+url.QueryEscape(r.URL.RequestURI()))
		w.WriteHeader(http.StatusSeeOther)
		return nil
	}
	hdr.Set("WWW-Authenticate", `Bearer realm="ticketi"`)
	return writeJSONError(w, http.StatusUnauthorized, "authentication required")
}

func writeJSONError(w http.ResponseWriter, code int, msg string) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, err := w.Write([]byte(`{"error":` + strconv.Quote(msg) + `}`))
	return err
}

func (h *Handler) cookie(value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: h.o.CookieName, Value: value, Path: h.o.CookiePath, Domain: h.o.CookieDomain, MaxAge: maxAge,
		HttpOnly: true, Secure: !h.o.InsecureCookie, SameSite: h.o.SameSite,
	}
}

func (h *Handler) clearCookie() *http.Cookie { return h.cookie("", -1) }

// loginWriter removes the login hand-off header from every response and,
// on a login route with a 2xx answer, turns it into a session and cookie.
type loginWriter struct {
	http.ResponseWriter
	h       *Handler
	r       *http.Request
	meta    Meta
	login   bool
	done    bool
	swallow bool
}

func (lw *loginWriter) Unwrap() http.ResponseWriter { return lw.ResponseWriter }

// FlushError passes flushes on only after the final header: while the
// login answer is being replaced, nothing of the upstream's may go out.
func (lw *loginWriter) FlushError() error {
	if !lw.done || lw.swallow {
		return nil
	}
	return http.NewResponseController(lw.ResponseWriter).Flush()
}

func (lw *loginWriter) WriteHeader(code int) {
	if lw.done || code < 200 {
		if !lw.swallow {
			lw.ResponseWriter.WriteHeader(code)
		}
		return
	}
	lw.done = true
	hdr := lw.Header()
	identity := hdr.Get(lw.h.o.IdentityHeader)
	StripIdentityHeaders(hdr, []string{lw.h.o.IdentityHeader})
	if lw.login && code >= 200 && code < 300 && identity != "" {
		if !lw.handOff(identity) {
			return
		}
	}
	lw.ResponseWriter.WriteHeader(code)
}

// handOff creates the session; on failure it answers in place of the
// upstream (the client must not believe it is logged in without a cookie).
func (lw *loginWriter) handOff(identity string) bool {
	h := lw.h
	id, err := ParseIdentity(identity)
	if err != nil {
		h.o.Logger.Error("login hand-off header from the upstream is invalid; no session created", zap.Error(err))
		lw.replace(http.StatusBadGateway, "login could not be completed")
		return false
	}
	token, _, err := h.m.Create(lw.r.Context(), id, lw.meta)
	if err != nil {
		h.o.Logger.Warn("could not create a session; answering 503", zap.Error(err))
		lw.Header().Set("Retry-After", retryAfter)
		lw.replace(http.StatusServiceUnavailable, "login is temporarily unavailable; try again shortly")
		return false
	}
	http.SetCookie(lw.ResponseWriter, h.cookie(h.m.SignCookie(token), int(h.maxAge()/time.Second)))
	if h.o.Observer != nil {
		h.o.Observer.LoggedIn()
	}
	h.o.Logger.Info("session created", zap.String("session", HashForLog(token)))
	return true
}

func (h *Handler) maxAge() time.Duration {
	if h.o.MaxAge > 0 {
		return h.o.MaxAge
	}
	return DefaultAbsoluteTimeout
}

// replace answers with an error instead of the upstream's response.
func (lw *loginWriter) replace(code int, msg string) {
	hdr := lw.Header()
	for _, k := range []string{"Content-Length", "Content-Encoding", "Etag", "Set-Cookie"} {
		hdr.Del(k)
	}
	_ = writeJSONError(lw.ResponseWriter, code, msg)
	lw.swallow = true
}

func (lw *loginWriter) Write(b []byte) (int, error) {
	if !lw.done {
		lw.WriteHeader(http.StatusOK)
	}
	if lw.swallow {
		return len(b), nil
	}
	return lw.ResponseWriter.Write(b)
}
