package sessionauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Session is the seed's session record. It is stored in Redis as this JSON
// under a key derived from the token; the token itself is never stored.
type Session struct {
	UserID       string `json:"userId"`
	Username     string `json:"username"`
	IsVerified   bool   `json:"isVerified"`
	CreatedAt    int64  `json:"createdAt"`    // unix ms
	LastActivity int64  `json:"lastActivity"` // unix ms; moved forward by touch
	IPAddress    string `json:"ipAddress"`
	UserAgent    string `json:"userAgent"`
}

// Identity is what the upstream hands to the edge on a successful login (the
// X-Ticketi-Identity response header).
type Identity struct {
	UserID     string
	Username   string
	IsVerified bool
}

// Meta describes the request that creates or uses a session.
type Meta struct {
	IP        string
	UserAgent string
}

// Limits on what is accepted from the upstream and from clients. They bound
// memory (per session and per local-cache entry) and keep every field safe
// to put in a header and a log line.
const (
	MaxIdentityHeader = 4096 // bytes of the login hand-off header
	MaxUserIDLen      = 128
	MaxUsernameLen    = 256
	maxIPLen          = 64
	maxUserAgentLen   = 512
	maxSessionJSON    = 8 << 10 // a stored session larger than this is corrupt
)

// Errors returned by ParseIdentity and Create. They never quote the input.
var (
	ErrIdentityTooLarge  = errors.New("sessionauth: identity header too large")
	ErrIdentityMalformed = errors.New("sessionauth: identity header is not a JSON object")
	ErrIdentityUserID    = fmt.Errorf("sessionauth: identity userId must be 1-%d printable characters without spaces", MaxUserIDLen)
	ErrIdentityUsername  = fmt.Errorf("sessionauth: identity username must be at most %d printable characters", MaxUsernameLen)
	ErrIdentityField     = errors.New("sessionauth: identity field has the wrong type or appears twice")
)

// ParseIdentity parses the upstream's login hand-off header strictly: one
// JSON object of at most MaxIdentityHeader bytes, each key at most once,
// "userId" a non-empty string (an integer is accepted and formatted, since a
// Node handler may forget String()) of at most MaxUserIDLen printable
// characters without white space, "username" a printable string,
// "isVerified" a boolean. Unknown keys are ignored, so the upstream may add
// fields; trailing data is rejected.
func ParseIdentity(headerValue string) (Identity, error) {
	if len(headerValue) > MaxIdentityHeader {
		return Identity{}, ErrIdentityTooLarge
	}
	if !utf8.ValidString(headerValue) {
		// encoding/json would quietly turn bad bytes into U+FFFD.
		return Identity{}, ErrIdentityMalformed
	}
	dec := json.NewDecoder(strings.NewReader(headerValue))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return Identity{}, ErrIdentityMalformed
	}
	var id Identity
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return Identity{}, ErrIdentityMalformed
		}
		key, _ := tok.(string)
		if seen[key] {
			return Identity{}, ErrIdentityField
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return Identity{}, ErrIdentityMalformed
		}
		switch key {
		case "userId":
			uid, ok := jsonID(raw)
			if !ok {
				return Identity{}, ErrIdentityUserID
			}
			id.UserID = uid
		case "username":
			if err := json.Unmarshal(raw, &id.Username); err != nil || bytes.Equal(raw, []byte("null")) {
				return Identity{}, ErrIdentityField
			}
		case "isVerified":
			if err := json.Unmarshal(raw, &id.IsVerified); err != nil || bytes.Equal(raw, []byte("null")) {
				return Identity{}, ErrIdentityField
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return Identity{}, ErrIdentityMalformed
	}
	if _, err := dec.Token(); err == nil {
		return Identity{}, ErrIdentityMalformed // trailing data
	}
	return id, id.validate()
}

func (id Identity) validate() error {
	if !ValidUserID(id.UserID) {
		return ErrIdentityUserID
	}
	if len(id.Username) > MaxUsernameLen || !printable(id.Username, true) {
		return ErrIdentityUsername
	}
	return nil
}

// ValidUserID reports whether s is acceptable as a user id: 1 to
// MaxUserIDLen bytes of valid UTF-8, printable, without white space. The
// admin API can use it to reject bad input before touching Redis.
func ValidUserID(s string) bool {
	return s != "" && len(s) <= MaxUserIDLen && printable(s, false)
}

// printable reports whether s is valid UTF-8 made of printable runes;
// spaces (U+0020 only) are allowed when spaces is set.
func printable(s string, spaces bool) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == ' ' && spaces {
			continue
		}
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// jsonID reads a user id given as a JSON string or integer.
func jsonID(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	var s string
	switch raw[0] {
	case '"':
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", false
		}
		s = strconv.FormatInt(n, 10)
	default:
		return "", false
	}
	return s, ValidUserID(s)
}

// cleanMeta bounds and sanitises request metadata before it is stored: it
// comes from the client and ends up in the admin API's session list.
func cleanMeta(m Meta) Meta {
	return Meta{IP: clip(m.IP, maxIPLen), UserAgent: clip(m.UserAgent, maxUserAgentLen)}
}

// clip drops control characters and invalid UTF-8 and cuts s to at most n
// bytes on a rune boundary.
func clip(s string, n int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 {
			clean = false
			break
		}
	}
	if !clean {
		s = strings.Map(func(r rune) rune {
			if r == utf8.RuneError || unicode.IsControl(r) {
				return -1
			}
			return r
		}, strings.ToValidUTF8(s, ""))
	}
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// Result is the outcome of a validation. Its String is a bounded metric
// label.
type Result int

// Results. Unavailable is returned only when Redis cannot be asked and the
// session was not confirmed within OutageGrace: the caller answers 503 with
// Retry-After, never a 401.
const (
	Valid       Result = iota // a live session
	Missing                   // no cookie or token at all
	Invalid                   // malformed, oversized, bad signature
	Expired                   // idle or absolute lifetime (or express cookie.expires) passed
	Unknown                   // no such session (logged out, expired in Redis, never existed)
	Unavailable               // Redis is down and the session is not in the local cache
	numResults
)

var resultNames = [numResults]string{"valid", "missing", "invalid", "expired", "unknown", "unavailable"}

func (r Result) String() string {
	if r < 0 || r >= numResults {
		return "unknown_result"
	}
	return resultNames[r]
}

// Results lists every Result, for pre-registering metric label values.
func Results() []Result {
	out := make([]Result, numResults)
	for i := range out {
		out[i] = Result(i)
	}
	return out
}
