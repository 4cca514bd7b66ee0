package sessionauth

import (
	"net/http"
	"testing"
)

func TestStripIdentityHeaders(t *testing.T) {
	names := []string{"X-Ticketi-User-Id", "X-Ticketi-Username", "x_ticketi_verified", "X-Ticketi-Identity"}
	h := http.Header{}
	spoofed := []string{
		"X-Ticketi-User-Id", "x-ticketi-user-id", "X_Ticketi_User_Id", "x_ticketi_user-id", "X-TICKETI-USER_ID",
		"x-Ticketi_user-Id", "X-Ticketi-Username", "x_ticketi_username", "X-Ticketi-Verified", "X_TICKETI_VERIFIED",
		"x-ticketi-identity", "X_Ticketi_Identity",
	}
	for _, k := range spoofed {
		h[k] = []string{"spoofed", "twice"} // raw keys: not canonicalised, repeated values
	}
	h.Add("x-ticketi-user-id", "canonicalised by Add")
	keep := map[string]string{
		"X-Ticketi-User":      "not an identity header",
		"X-Ticketi-User-Idx":  "longer name",
		"X-Ticketi-Userid":    "no separator",
		"X-Ticketi-User.Id":   "dot is not a separator",
		"Cookie":              "connect.sid=x",
		"X-Forwarded-For":     "203.0.113.9",
		"X-Ticketi-User-Id-2": "suffix",
	}
	for k, v := range keep {
		h[k] = []string{v}
	}
	StripIdentityHeaders(h, names)
	if len(h) != len(keep) {
		t.Fatalf("left %d headers, want %d: %v", len(h), len(keep), h)
	}
	for k, v := range keep {
		if got := h[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s was touched: %v", k, got)
		}
	}
	// No names or no headers: no-ops, no panic.
	StripIdentityHeaders(nil, names)
	StripIdentityHeaders(h, nil)
	if len(h) != len(keep) {
		t.Fatal("no-op stripped something")
	}
}

func TestFoldHeaderName(t *testing.T) {
	for in, want := range map[string]string{
		"X-Ticketi-User-Id": "x-ticketi-user-id", "X_Ticketi_User_Id": "x-ticketi-user-id",
		"x_ticketi_user-id": "x-ticketi-user-id", "Ä_B": "Ä-b",
	} {
		if got := foldHeaderName(in); got != want {
			t.Errorf("foldHeaderName(%q) = %q, want %q", in, got, want)
		}
	}
}
