package ratelimit

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
)

// Conformance with draft-ietf-httpapi-ratelimit-headers (RateLimit-Policy
// and RateLimit as Structured Field Lists, RFC 9651) and RFC 9457 problem
// details. Exact strings: a client library parses these.

func res(t *Tier, allowed bool, remaining int64, reset, retry time.Duration) TierResult {
	return TierResult{Tier: t, Allowed: allowed, Remaining: remaining, Reset: reset, RetryAfter: retry}
}

func decision(results ...TierResult) Decision {
	d := Decision{Allowed: true, Results: results}
	for i := range d.Results {
		r := &d.Results[i]
		if !r.Allowed && !r.Skipped {
			d.Allowed = false
			if d.Denied == nil || r.RetryAfter > d.Denied.RetryAfter {
				d.Denied = r
			}
		}
	}
	return d
}

func TestRateLimitHeaderStrings(t *testing.T) {
	api, auth, pay := apiTier(), authTier(), paymentTier()
	skipped := res(api, false, 0, 0, 0)
	skipped.Skipped = true
	dry := decision(res(pay, false, 0, 12*time.Second, 12*time.Second))
	dry.Allowed, dry.DryRun = true, true
	for _, tc := range []struct {
		name                string
		d                   Decision
		policy, limit, wait string
	}{
		{"one tier", decision(res(api, true, 42, 17200*time.Millisecond, 0)),
			`"api";q=100;w=60`, `"api";r=42;t=18`, ""},
		{"seed tiers in check order", decision(res(api, true, 99, 600*time.Millisecond, 0), res(auth, true, 9, 6*time.Second, 0), res(pay, true, 4, 12*time.Second, 0)),
			`"api";q=100;w=60, "auth";q=10;w=60, "payment";q=5;w=60`, `"api";r=99;t=1, "auth";r=9;t=6, "payment";r=4;t=12`, ""},
		{"deny: r=0, t equals Retry-After", decision(res(api, true, 97, 1800*time.Millisecond, 0), res(auth, false, 0, 5200*time.Millisecond, 5200*time.Millisecond)),
			`"api";q=100;w=60, "auth";q=10;w=60`, `"api";r=97;t=2, "auth";r=0;t=6`, "6"},
		{"whole seconds are not rounded up", decision(res(api, true, 70, 18*time.Second, 0)),
			`"api";q=100;w=60`, `"api";r=70;t=18`, ""},
		{"a microsecond over rounds up", decision(res(api, true, 70, 18*time.Second+time.Microsecond, 0)),
			`"api";q=100;w=60`, `"api";r=70;t=19`, ""},
		{"full quota: t=0", decision(res(api, true, 100, 0, 0)),
			`"api";q=100;w=60`, `"api";r=100;t=0`, ""},
		{"never t=0 while denied", decision(res(api, false, 0, time.Microsecond, time.Microsecond)),
			`"api";q=100;w=60`, `"api";r=0;t=1`, "1"},
		{"longest wait wins Retry-After", decision(res(auth, false, 0, 3*time.Second, 3*time.Second), res(pay, false, 0, 40*time.Second, 40*time.Second)),
			`"auth";q=10;w=60, "payment";q=5;w=60`, `"auth";r=0;t=3, "payment";r=0;t=40`, "40"},
		{"skipped tier has a policy but no limit item", decision(skipped, res(auth, false, 0, 4*time.Second, 4*time.Second)),
			`"api";q=100;w=60, "auth";q=10;w=60`, `"auth";r=0;t=4`, "4"},
		{"windows round up to whole seconds", decision(
			res(&Tier{Name: "burst", Limit: 20, Window: 500 * time.Millisecond}, true, 19, 25*time.Millisecond, 0),
			res(&Tier{Name: "slow", Limit: 3, Window: 1500 * time.Millisecond}, true, 2, 500*time.Millisecond, 0),
			res(&Tier{Name: "daily", Limit: 1000, Window: 24 * time.Hour}, true, 999, 86400*time.Millisecond, 0)),
			`"burst";q=20;w=1, "slow";q=3;w=2, "daily";q=1000;w=86400`, `"burst";r=19;t=1, "slow";r=2;t=1, "daily";r=999;t=87`, ""},
		{"dry run: no Retry-After", dry, `"payment";q=5;w=60`, `"payment";r=0;t=12`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			h.Set("Retry-After", "stale")
			h.Set("RateLimit", "stale")
			SetHeaders(h, tc.d)
			if got := h.Values("RateLimit-Policy"); len(got) != 1 || got[0] != tc.policy {
				t.Errorf("RateLimit-Policy = %q, want %q", got, tc.policy)
			}
			if got := h.Values("RateLimit"); len(got) != 1 || got[0] != tc.limit {
				t.Errorf("RateLimit = %q, want %q", got, tc.limit)
			}
			wantWait := tc.wait
			if wantWait == "" {
				wantWait = "stale" // an allowed response leaves Retry-After alone
			}
			if got := h.Get("Retry-After"); got != wantWait {
				t.Errorf("Retry-After = %q, want %q", got, wantWait)
			}
			checkStructured(t, h.Get("RateLimit-Policy"), "q", "w")
			checkStructured(t, h.Get("RateLimit"), "r", "t")
		})
	}
}

// checkStructured parses v as an RFC 9651 List of String items with the
// given non-negative Integer parameters, and requires the canonical
// serialization to be v itself.
func checkStructured(t *testing.T, v string, params ...string) {
	t.Helper()
	l, err := httpsfv.UnmarshalList([]string{v})
	if err != nil {
		t.Fatalf("%q is not a structured List: %v", v, err)
	}
	for _, m := range l {
		it, ok := m.(httpsfv.Item)
		if !ok {
			t.Fatalf("%q: member %v is not an Item", v, m)
		}
		if _, ok := it.Value.(string); !ok {
			t.Fatalf("%q: policy name %v is not a String", v, it.Value)
		}
		if got := it.Params.Names(); len(got) != len(params) {
			t.Fatalf("%q: parameters %v, want %v", v, got, params)
		}
		for _, p := range params {
			n, ok := it.Params.Get(p)
			if i, isInt := n.(int64); !ok || !isInt || i < 0 {
				t.Fatalf("%q: parameter %s = %v, want a non-negative Integer", v, p, n)
			}
		}
	}
	if again, err := httpsfv.Marshal(l); err != nil || again != v {
		t.Fatalf("canonical form of %q is %q (%v)", v, again, err)
	}
}

func TestNoHeadersWithoutChecks(t *testing.T) {
	h := http.Header{}
	SetHeaders(h, Decision{Allowed: true})
	if len(h) != 0 {
		t.Fatalf("headers for an empty decision: %v", h)
	}
}

func TestNamesAreQuotedAndEscaped(t *testing.T) {
	// A tier that skipped Validate must still yield a valid field.
	odd := &Tier{Name: "we\"ird\\na\nme", Limit: 1, Window: time.Second}
	h := http.Header{}
	SetHeaders(h, decision(res(odd, true, 0, time.Second, 0)))
	if got, want := h.Get("RateLimit-Policy"), `"we\"ird\\na?me";q=1;w=1`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	checkStructured(t, h.Get("RateLimit-Policy"), "q", "w")
}

func TestProblemJSONBody(t *testing.T) {
	auth := authTier()
	d := decision(res(apiTier(), true, 90, 6*time.Second, 0), res(auth, false, 0, 5200*time.Millisecond, 5200*time.Millisecond))
	want := `{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Too Many Requests",` +
		`"status":429,"detail":"Too many authentication attempts","tier":"auth","retry_after":6,"violated-policies":["auth"]}`
	if got := string(ProblemJSON(d)); got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
	h := http.Header{}
	SetHeaders(h, d)
	var body struct {
		RetryAfter int64 `json:"retry_after"`
	}
	if err := json.Unmarshal(ProblemJSON(d), &body); err != nil || h.Get("Retry-After") != "6" || body.RetryAfter != 6 {
		t.Fatalf("retry_after %d vs Retry-After %q (%v)", body.RetryAfter, h.Get("Retry-After"), err)
	}

	// Several denials: all named, the longest wait is the one reported; a
	// hostile message stays inert.
	odd := &Tier{Name: "x", Limit: 1, Window: time.Minute, Message: `<script>"boom"</script>`}
	d = decision(res(odd, false, 0, time.Second, time.Second), res(paymentTier(), false, 0, 30*time.Second, 30*time.Second))
	want = `{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Too Many Requests",` +
		`"status":429,"detail":"Too many payment requests","tier":"payment","retry_after":30,"violated-policies":["x","payment"]}`
	if got := string(ProblemJSON(d)); got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
	d = decision(res(odd, false, 0, time.Second, time.Second))
	if got := string(ProblemJSON(d)); !json.Valid([]byte(got)) || strings.Contains(got, "<script>") || !strings.Contains(got, `\"boom\"`) {
		t.Fatalf("message not escaped: %s", got)
	}
	// No message: a default; not denied: no body.
	d = decision(res(&Tier{Name: "y", Limit: 1, Window: time.Minute}, false, 0, time.Second, time.Second))
	if got := string(ProblemJSON(d)); !json.Valid([]byte(got)) || !strings.Contains(got, `"detail":"Too many requests"`) {
		t.Fatalf("default detail: %s", got)
	}
	if b := ProblemJSON(decision(res(auth, true, 1, time.Second, 0))); b != nil {
		t.Fatalf("body for an allowed request: %s", b)
	}
}

// TestEleventhAuthRequest is the scenario end to end through the
// limiter: 10 auth requests per minute per IP; the 11th is refused with
// these exact fields and body.
func TestEleventhAuthRequest(t *testing.T) {
	clock := newClock()
	l := newLimiter(t, Options{Now: clock.Now})
	checks := []Check{{gcra(apiTier()), "203.0.113.9"}, {gcra(authTier()), "203.0.113.9"}}
	for range 10 {
		clock.Advance(100 * time.Millisecond)
		if d := allow(l, checks...); !d.Allowed {
			t.Fatalf("denied early: %+v", d)
		}
	}
	clock.Advance(100 * time.Millisecond)
	d := allow(l, checks...)
	if d.Allowed {
		t.Fatal("11th auth request allowed")
	}
	h := http.Header{}
	SetHeaders(h, d)
	// GCRA's numbers, 1.1 s after the first request: api used 10 of 100
	// and got 1 back (one every 600 ms): its TAT is 5 s ahead, so 91 left
	// and full in 5 s; the denied request consumed nothing. auth's first
	// request comes back 6 s after it was made: wait 5 s.
	for k, want := range map[string]string{
		// GCRA's real policy: 2*limit-1 fit into any window.
		"RateLimit-Policy": `"api";q=199;w=60, "auth";q=19;w=60`,
		"RateLimit":        `"api";r=91;t=5, "auth";r=0;t=5`,
		"Retry-After":      "5",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	want := `{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Too Many Requests",` +
		`"status":429,"detail":"Too many authentication attempts","tier":"auth","retry_after":5,"violated-policies":["auth"]}`
	if got := string(ProblemJSON(d)); got != want {
		t.Fatalf("body\n got %s\nwant %s", got, want)
	}
}
