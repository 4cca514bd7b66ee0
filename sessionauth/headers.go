package sessionauth

import (
	"net/http"
	"strings"
)

// StripIdentityHeaders deletes from h every header whose name matches one
// of names in any letter case and with '_' and '-' taken as the same
// character: for "X-Ticketi-User-Id" it removes X-Ticketi-User-Id,
// x-ticketi-user-id, X_Ticketi_User_Id, x_ticketi_user-id and so on.
//
// The '_' spellings matter because CGI/FastCGI (and some frameworks) turn
// both Remote-User and Remote_User into HTTP_REMOTE_USER, so deleting only
// the exact name lets a client smuggle an identity through (Caddy's
// GHSA-f59h-q822-g45g, after GHSA-7r4p-vjf4-gxv4 where forward_auth did not
// strip client-supplied copy_headers at all). Every spelling present is
// removed, repeated fields included, whether or not the key is in Go's
// canonical form.
func StripIdentityHeaders(h http.Header, names []string) {
	if len(h) == 0 || len(names) == 0 {
		return
	}
	want := make(map[string]struct{}, len(names))
	for _, n := range names {
		want[foldHeaderName(n)] = struct{}{}
	}
	for k := range h {
		if _, ok := want[foldHeaderName(k)]; ok {
			delete(h, k)
		}
	}
}

// foldHeaderName lower-cases ASCII letters and maps '_' to '-'.
func foldHeaderName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		case r == '_':
			return '-'
		}
		return r
	}, s)
}
