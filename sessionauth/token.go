package sessionauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"hash"
	"strings"
	"sync"
)

// Token and cookie format.
//
//	token  = base64url(32 random bytes)                      43 characters
//	cookie = token "." base64url(HMAC-SHA256(k_cookie, token))  87 characters
//
// Both are URL- and cookie-safe without escaping. k_cookie is derived from
// each signing key (see keyring), so the raw keys are used for nothing else.
const (
	tokenBytes  = 32
	tokenLen    = 43 // base64.RawURLEncoding.EncodedLen(tokenBytes)
	sigLen      = 43 // of a 32-byte HMAC
	cookieLen   = tokenLen + 1 + sigLen
	minKeyBytes = 32

	// MaxCookieLen bounds what VerifyCookie and ValidateExpress even look at.
	MaxCookieLen = 4096
)

// Labels for key derivation (HMAC(key, label)): domain separation between
// the cookie MAC and the storage-key derivation.
const (
	labelCookie  = "ticketi-edge/sessionauth/cookie-mac/v1"
	labelStorage = "ticketi-edge/sessionauth/storage-key/v1"
)

// keyring holds the derived keys.
type keyring struct {
	cookie  [][]byte   // one per signing key; [0] signs, all verify
	storage []byte     // HMAC key for token → storage key
	macs    *sync.Pool // of HMAC-SHA256 keyed with storage, reused on the hot path
}

func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func newKeyring(signing [][]byte, storage []byte) keyring {
	kr := keyring{}
	for _, k := range signing {
		kr.cookie = append(kr.cookie, derive(k, labelCookie))
	}
	if storage == nil {
		// Derived from the LAST (oldest) signing key: rotation prepends new
		// keys, so the storage key survives every rotation step except the
		// retirement of that last key. See the package doc.
		storage = signing[len(signing)-1]
	}
	kr.storage = derive(storage, labelStorage)
	sk := kr.storage
	kr.macs = &sync.Pool{New: func() any { return hmac.New(sha256.New, sk) }}
	return kr
}

// newToken returns a fresh token with 256 bits from crypto/rand.
func newToken() string {
	var b [tokenBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+: it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// wellFormedToken reports whether t looks like a token of ours: exactly
// tokenLen characters of the URL-safe base64 alphabet that decode to
// tokenBytes (so the unused low bits of the last character are zero).
func wellFormedToken(t string) bool {
	if len(t) != tokenLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		if !b64url(t[i]) {
			return false
		}
	}
	var b [tokenBytes]byte
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(t))
	return err == nil && n == tokenBytes
}

func b64url(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func mac(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// sign returns the cookie signature of token under key.
func sign(key []byte, token string) string {
	return base64.RawURLEncoding.EncodeToString(mac(key, token))
}

// signCookie returns token "." sig with the first (current) key.
func (kr keyring) signCookie(token string) string {
	return token + "." + sign(kr.cookie[0], token)
}

// verifyCookie checks value against every key in the rotation list. The
// comparison is constant-time and every key is tried, so timing tells
// neither how much of a signature matched nor which key did.
func (kr keyring) verifyCookie(value string) (string, bool) {
	if len(value) != cookieLen || value[tokenLen] != '.' {
		return "", false
	}
	token, sig := value[:tokenLen], value[tokenLen+1:]
	if !wellFormedToken(token) {
		return "", false
	}
	ok := 0
	for _, k := range kr.cookie {
		ok |= subtle.ConstantTimeCompare([]byte(sign(k, token)), []byte(sig))
	}
	if ok != 1 {
		return "", false
	}
	return token, true
}

// storageID maps a token to its storage id: hex(HMAC-SHA256(k_storage,
// token)), 64 characters. It is what Redis keys, the per-user index, bus
// messages and handles are made of; it cannot be turned back into a token.
func (kr keyring) storageID(token string) string { return kr.storageKey(token).id() }

// storageKey is storageID as bytes: the local caches' key.
func (kr keyring) storageKey(token string) cacheKey {
	h := kr.macs.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(token))
	var k cacheKey
	h.Sum(k[:0])
	kr.macs.Put(h)
	return k
}

func (k cacheKey) id() string { return hex.EncodeToString(k[:]) }

// Handle is the short, non-secret name of a session in List: the first 12
// hex characters (48 bits) of its storage id.
const handleLen = 12

func handleOf(storageID string) string { return storageID[:handleLen] }

func validHandle(h string) bool {
	if len(h) != handleLen {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func validStorageID(id string) bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// HashForLog returns a short, non-reversible name for a token or session
// id (12 hex characters of an unkeyed SHA-256 with a fixed label), so log
// lines about one session can be correlated without revealing it.
func HashForLog(token string) string {
	if token == "" {
		return "-"
	}
	sum := sha256.Sum256([]byte("ticketi-edge/sessionauth/log/v1\x00" + token))
	return hex.EncodeToString(sum[:6])
}
