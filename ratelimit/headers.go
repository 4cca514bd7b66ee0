package ratelimit

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names and the problem type of draft-ietf-httpapi-ratelimit-headers.
const (
	HeaderPolicy     = "RateLimit-Policy"
	HeaderRateLimit  = "RateLimit"
	HeaderRetryAfter = "Retry-After"

	// ProblemContentType is the media type of ProblemJSON (RFC 9457).
	ProblemContentType = "application/problem+json"
	// ProblemType is the draft's "quota-exceeded" problem type.
	ProblemType = "https://iana.org/assignments/http-problem-types#quota-exceeded"
)

// SetHeaders writes the draft's fields for d into h, replacing any there:
//
//	RateLimit-Policy: "api";q=100;w=60, "auth";q=10;w=60
//	RateLimit: "api";r=42;t=18, "auth";r=9;t=6
//
// One item per tier, in the order of the checks, as Structured Field Lists
// (RFC 9651): the policy name is a String, q the most requests an interval
// of length w admits (the Limit; for a GCRA tier see Tier.PolicyQuota), w the Window in whole
// seconds (rounded up, at least 1: the draft has no sub-second windows), r
// the quota left, t the effective window in whole seconds rounded up (so a
// client waiting t seconds never comes back early, and t is never 0 while
// the tier denies). Tiers skipped by a local deny get a policy item but no
// RateLimit item (the draft lets a server omit what it does not know). When
// the request is refused, Retry-After is the denying tier's wait in seconds,
// rounded up, at least 1; it equals that tier's t.
func SetHeaders(h http.Header, d Decision) {
	if len(d.Results) == 0 {
		return
	}
	var policy, limit []byte
	for i := range d.Results {
		r := &d.Results[i]
		if r.Tier == nil {
			continue
		}
		if len(policy) > 0 {
			policy = append(policy, ", "...)
		}
		policy = appendSFString(policy, r.Tier.Name)
		policy = append(policy, ";q="...)
		policy = strconv.AppendInt(policy, r.Tier.PolicyQuota(), 10)
		policy = append(policy, ";w="...)
		policy = strconv.AppendInt(policy, max(ceilSeconds(r.Tier.Window), 1), 10)
		if r.Skipped {
			continue
		}
		if len(limit) > 0 {
			limit = append(limit, ", "...)
		}
		limit = appendSFString(limit, r.Tier.Name)
		limit = append(limit, ";r="...)
		limit = strconv.AppendInt(limit, max(r.Remaining, 0), 10)
		limit = append(limit, ";t="...)
		t := ceilSeconds(r.Reset)
		if !r.Allowed {
			t = max(t, 1)
		}
		limit = strconv.AppendInt(limit, t, 10)
	}
	if len(policy) > 0 {
		h.Set(HeaderPolicy, string(policy))
	}
	if len(limit) > 0 {
		h.Set(HeaderRateLimit, string(limit))
	}
	if !d.Allowed && d.Denied != nil {
		h.Set(HeaderRetryAfter, strconv.FormatInt(retryAfterSeconds(d.Denied.RetryAfter), 10))
	}
}

// ceilSeconds rounds d up to whole seconds; negative durations are 0.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

func retryAfterSeconds(d time.Duration) int64 { return max(ceilSeconds(d), 1) }

// appendSFString appends s as a Structured Field String: quoted, with '"'
// and '\' escaped. Tier names are validated to [A-Za-z0-9_-], so escaping
// only guards against a Tier that skipped Validate; bytes a String cannot
// hold are replaced by '?'.
func appendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// problem is the RFC 9457 body of a 429.
type problem struct {
	Type       string   `json:"type"`
	Title      string   `json:"title"`
	Status     int      `json:"status"`
	Detail     string   `json:"detail"`
	Tier       string   `json:"tier"`
	RetryAfter int64    `json:"retry_after"`
	Violated   []string `json:"violated-policies"`
}

// DefaultMessage is the problem detail for a tier without a Message.
const DefaultMessage = "Too many requests"

// ProblemJSON is the application/problem+json body for a refused request:
//
//	{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",
//	 "title":"Too Many Requests","status":429,"detail":"<tier message>",
//	 "tier":"auth","retry_after":18,"violated-policies":["auth"]}
//
// detail is the denying tier's Message, retry_after equals Retry-After, and
// violated-policies (the draft's extension member) names every tier that
// denied. It returns nil when no tier denied.
func ProblemJSON(d Decision) []byte {
	if d.Denied == nil || d.Denied.Tier == nil {
		return nil
	}
	p := problem{
		Type:       ProblemType,
		Title:      http.StatusText(http.StatusTooManyRequests),
		Status:     http.StatusTooManyRequests,
		Detail:     d.Denied.Tier.Message,
		Tier:       d.Denied.Tier.Name,
		RetryAfter: retryAfterSeconds(d.Denied.RetryAfter),
	}
	if strings.TrimSpace(p.Detail) == "" {
		p.Detail = DefaultMessage
	}
	for i := range d.Results {
		if r := &d.Results[i]; !r.Allowed && !r.Skipped && r.Tier != nil {
			p.Violated = append(p.Violated, r.Tier.Name)
		}
	}
	// Marshal cannot fail on this struct; the HTML escaping it does is
	// harmless in JSON and keeps a hostile Message inert in a browser.
	b, _ := json.Marshal(p)
	return b
}
