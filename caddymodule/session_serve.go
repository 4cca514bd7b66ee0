package caddymodule

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ticketi/edge/sessionauth"
)

// sessionRetryAfter is what a 503 during a Redis outage suggests (seconds).
const sessionRetryAfter = "5"

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (s *Session) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// Whatever the client claims about identity never reaches the upstream,
	// in any letter case or with '_' for '-'.
	sessionauth.StripIdentityHeaders(r.Header, s.strip)
	meta := sessionauth.Meta{UserAgent: r.UserAgent()}
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		meta.IP = ip
	}
	token, fromCookie, sess, res := s.identify(r, meta)
	s.results[res].Inc()
	if res == sessionauth.Valid {
		s.setIdentity(r, sess)
	}

	if r.Method == http.MethodPost && s.logout.Match(r) {
		if token != "" {
			if err := s.engine.Destroy(r.Context(), token); err != nil {
				s.log.Warn("logout could not reach the session store: refused here now, queued until redis is back, refused by the other edges within outage_grace",
					zap.String("session", sessionauth.HashForLog(token)), zap.Error(err))
			}
			s.app.metrics.sessionLogouts.Inc()
		}
		http.SetCookie(w, s.clearCookie())
	} else if fromCookie && (res == sessionauth.Invalid || res == sessionauth.Expired || res == sessionauth.Unknown) {
		// A dead cookie is removed so the browser stops sending it.
		http.SetCookie(w, s.clearCookie())
	}

	if res != sessionauth.Valid && s.protected(r) {
		return s.deny(w, r, res)
	}
	login := r.Method == http.MethodPost && s.login.Match(r)
	return next.ServeHTTP(&sessionWriter{ResponseWriter: w, s: s, r: r, meta: meta, login: login}, r)
}

// identify finds the request's session: our signed cookie, a bearer
// token (the same signed value), or an express-session cookie.
func (s *Session) identify(r *http.Request, meta sessionauth.Meta) (token string, fromCookie bool, sess sessionauth.Session, res sessionauth.Result) {
	ctx := r.Context()
	value, fromCookie := "", false
	if c, err := r.Cookie(s.CookieName); err == nil {
		value, fromCookie = c.Value, true
	} else if auth := r.Header.Get("Authorization"); len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		value = strings.TrimSpace(auth[7:])
	}
	if value != "" {
		tok, ok := s.engine.VerifyCookie(value)
		if !ok {
			// Forged or mangled: no Redis call needed to say no.
			return "", fromCookie, sess, sessionauth.Invalid
		}
		sess, res = s.engine.Validate(ctx, tok, meta)
		return tok, fromCookie, sess, res
	}
	if s.Express != nil {
		if c, err := r.Cookie(s.Express.CookieName); err == nil {
			sess, res = s.engine.ValidateExpress(ctx, c.Value)
			return "", false, sess, res
		}
	}
	return "", false, sess, sessionauth.Missing
}

// setIdentity publishes the user to later handlers (placeholders, for
// rate-limit keys and per-user cache keys) and to the upstream (headers).
func (s *Session) setIdentity(r *http.Request, sess sessionauth.Session) {
	verified := strconv.FormatBool(sess.IsVerified)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.auth.user.id", sess.UserID)
		repl.Set("http.auth.user.username", sess.Username)
		repl.Set("http.auth.user.verified", verified)
	}
	r.Header.Set(s.UserIDHeader, sess.UserID)
	if sess.Username != "" {
		r.Header.Set(s.UsernameHeader, sess.Username)
	}
	r.Header.Set(s.VerifiedHeader, verified)
}

// protected reports whether r needs a session.
func (s *Session) protected(r *http.Request) bool {
	if len(s.Protect) > 0 && s.protect.Match(r) {
		return true
	}
	if !s.ProtectMutations {
		return false
	}
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return len(s.MutationsExcept) == 0 || !s.except.Match(r)
	}
	return false
}

// deny answers a protected request without a valid session: 503 when the
// store is unreachable (never a false 401), else 401 JSON or, for a
// browser, a redirect to the login page.
func (s *Session) deny(w http.ResponseWriter, r *http.Request, res sessionauth.Result) error {
	h := w.Header()
	if res == sessionauth.Unavailable {
		h.Set("Retry-After", sessionRetryAfter)
		return writeJSONError(w, http.StatusServiceUnavailable, "sessions are temporarily unavailable; try again shortly")
	}
	if s.LoginRedirect != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		strings.Contains(r.Header.Get("Accept"), "text/html") {
		h.Set("Location", s.LoginRedirect+"?next="+url.QueryEscape(r.URL.RequestURI()))
		w.WriteHeader(http.StatusSeeOther)
		return nil
	}
	h.Set("WWW-Authenticate", `Bearer realm="ticketi"`)
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

func (s *Session) cookie(value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: s.CookieName, Value: value, Path: s.CookiePath, Domain: s.CookieDomain, MaxAge: maxAge,
		HttpOnly: true, Secure: !s.InsecureCookie, SameSite: s.sameSite,
	}
}

func (s *Session) clearCookie() *http.Cookie { return s.cookie("", -1) }

// sessionWriter removes the login hand-off header from every response and,
// on a login route with a 2xx answer, turns it into a session and cookie.
type sessionWriter struct {
	http.ResponseWriter
	s       *Session
	r       *http.Request
	meta    sessionauth.Meta
	login   bool
	done    bool
	swallow bool
}

func (sw *sessionWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }

// FlushError passes flushes on only after the final header: while the
// login answer is being replaced, nothing of the upstream's may go out.
func (sw *sessionWriter) FlushError() error {
	if !sw.done || sw.swallow {
		return nil
	}
	return http.NewResponseController(sw.ResponseWriter).Flush()
}

func (sw *sessionWriter) WriteHeader(code int) {
	if sw.done || code < 200 {
		if !sw.swallow {
			sw.ResponseWriter.WriteHeader(code)
		}
		return
	}
	sw.done = true
	h := sw.Header()
	identity := h.Get(sw.s.IdentityHeader)
	sessionauth.StripIdentityHeaders(h, []string{sw.s.IdentityHeader})
	if sw.login && code >= 200 && code < 300 && identity != "" {
		if !sw.handOff(identity) {
			return
		}
	}
	sw.ResponseWriter.WriteHeader(code)
}

// handOff creates the session; on failure it answers in place of the
// upstream (the client must not believe it is logged in without a cookie).
func (sw *sessionWriter) handOff(identity string) bool {
	s := sw.s
	id, err := sessionauth.ParseIdentity(identity)
	if err != nil {
		s.log.Error("login hand-off header from the upstream is invalid; no session created", zap.Error(err))
		sw.replace(http.StatusBadGateway, "login could not be completed")
		return false
	}
	token, _, err := s.engine.Create(sw.r.Context(), id, sw.meta)
	if err != nil {
		s.log.Warn("could not create a session; answering 503", zap.Error(err))
		sw.Header().Set("Retry-After", sessionRetryAfter)
		sw.replace(http.StatusServiceUnavailable, "login is temporarily unavailable; try again shortly")
		return false
	}
	http.SetCookie(sw.ResponseWriter, s.cookie(s.engine.SignCookie(token), int(s.absoluteTimeout()/time.Second)))
	s.app.metrics.sessionLogins.Inc()
	s.log.Info("session created", zap.String("session", sessionauth.HashForLog(token)))
	return true
}

func (s *Session) absoluteTimeout() time.Duration {
	if s.AbsoluteTimeout > 0 {
		return time.Duration(s.AbsoluteTimeout)
	}
	return sessionauth.DefaultAbsoluteTimeout
}

// replace answers with an error instead of the upstream's response.
func (sw *sessionWriter) replace(code int, msg string) {
	h := sw.Header()
	for _, k := range []string{"Content-Length", "Content-Encoding", "Etag", "Set-Cookie"} {
		h.Del(k)
	}
	_ = writeJSONError(sw.ResponseWriter, code, msg)
	sw.swallow = true
}

func (sw *sessionWriter) Write(b []byte) (int, error) {
	if !sw.done {
		sw.WriteHeader(http.StatusOK)
	}
	if sw.swallow {
		return len(b), nil
	}
	return sw.ResponseWriter.Write(b)
}
