package ratelimit

import (
	"errors"
	"net/http"

	"github.com/ticketi/edge/internal/edgehttp"
)

// Next is the rest of the handler chain (edgehttp.Next, shared by the
// engines); caddyhttp.Handler satisfies it.
type Next = edgehttp.Next

// NextFunc adapts a function to Next.
type NextFunc = edgehttp.NextFunc

// HTTPTier is one tier as a Handler applies it to requests.
type HTTPTier struct {
	Tier *Tier
	// Match says whether the tier applies to a request; nil: every request.
	Match func(*http.Request) bool
	// Key is the request's key for the tier, resolved by the caller's rule
	// (a missing key falls back to the client, or is "", which denies).
	Key func(*http.Request) string
}

// HTTPOptions configure a Handler.
type HTTPOptions struct {
	// Tiers are the limits; every tier that matches a request applies.
	Tiers []HTTPTier
	// Exempt, when set, names requests that pass undecided (the Caddy
	// glue's own bounded internal requests).
	Exempt func(*http.Request) bool
}

// Handler is the limiter's HTTP entry point: every tier that matches a
// request is decided at once, the draft's RateLimit fields go on the
// answer, and a refused request gets a 429 problem (RFC 9457).
type Handler struct {
	l *Limiter
	o HTTPOptions
}

// NewHandler returns the Handler for l. Tiers are validated here, so a bad
// tier fails the configuration, not a request.
func NewHandler(l *Limiter, o HTTPOptions) (*Handler, error) {
	if l == nil {
		return nil, errors.New("ratelimit: NewHandler needs a Limiter")
	}
	for _, t := range o.Tiers {
		if err := t.Tier.Validate(); err != nil {
			return nil, err
		}
		if t.Key == nil {
			return nil, errors.New("tier " + t.Tier.Name + ": no key function")
		}
	}
	return &Handler{l: l, o: o}, nil
}

// Handle decides r and calls next when it is allowed.
func (h *Handler) Handle(w http.ResponseWriter, r *http.Request, next Next) error {
	if h.o.Exempt != nil && h.o.Exempt(r) {
		return next.ServeHTTP(w, r)
	}
	var buf [4]Check
	checks := buf[:0]
	for i := range h.o.Tiers {
		t := &h.o.Tiers[i]
		if t.Match != nil && !t.Match(r) {
			continue
		}
		checks = append(checks, Check{Tier: t.Tier, Key: t.Key(r)})
	}
	if len(checks) == 0 {
		return next.ServeHTTP(w, r)
	}
	d := h.l.Allow(r.Context(), checks)
	SetHeaders(w.Header(), d)
	if d.Allowed {
		return next.ServeHTTP(w, r)
	}
	hdr := w.Header()
	hdr.Set("Content-Type", ProblemContentType)
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusTooManyRequests)
	_, err := w.Write(ProblemJSON(d))
	return err
}
