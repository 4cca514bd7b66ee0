// Package edgehttp holds what the three engines' HTTP entry points share:
// each is Handle(w, r, next Next) error, the shape of Caddy's
// caddyhttp.MiddlewareHandler without importing Caddy.
package edgehttp

import "net/http"

// Next is the rest of the handler chain. caddyhttp.Handler satisfies it,
// so the Caddy glue passes its next handler without wrapping it.
type Next interface {
	ServeHTTP(http.ResponseWriter, *http.Request) error
}

// NextFunc adapts a function to Next.
type NextFunc func(http.ResponseWriter, *http.Request) error

// ServeHTTP calls f.
func (f NextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }
