package cachehandler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
	"github.com/ticketi/edge/internal/store"
)

// withCanonicalLanguages gives the event rule `vary Accept-Language en fr de`.
func withCanonicalLanguages(c *Config) {
	for _, r := range c.Rules {
		if r.Name == "event" {
			r.Vary = []VaryCanon{{Header: "accept-language", Values: []string{"en", "fr", "de"}}}
		}
	}
}

// junkLanguages are 8 Accept-Language values no rule lists, enough to fill
// the 8-variant bound on their own.
func junkLanguages() []string {
	out := make([]string, MaxRuleVariants)
	for i := range out {
		out[i] = fmt.Sprintf("x%d-junk%d;q=0.%d", i, i, 9-i)
	}
	return out
}

// origin calls by the Accept-Language the upstream saw.
func (o *langOrigin) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for l := range o.calls {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// checkCanonicalised: junk languages then real ones all map to the three
// canonical variants; the origin only ever sees en, fr or de; a real
// language after the junk hits.
func checkCanonicalised(t *testing.T, g *rig, o *langOrigin, wantHits bool) {
	t.Helper()
	for _, l := range junkLanguages() {
		if w := g.do(langReq("/api/events/7", l)); bodyLang(t, w) != "en" {
			t.Fatalf("junk %q got the %q answer (%q)", l, bodyLang(t, w), w.Header().Get("Cache-Status"))
		}
	}
	cases := []struct{ sent, want string }{
		{"fr-CA,en;q=0.2", "fr"},
		{"de-DE-1996", "de"},
		{"en-US,en;q=0.9", "en"},
		{"es, fr;q=0.1", "fr"},
		{"fr;q=0, de;q=0.5", "de"},
		{"*", "en"},
		{"", "en"},
	}
	for round := 0; round < 2; round++ {
		for _, c := range cases {
			r := langReq("/api/events/7", c.sent)
			if c.sent == "" {
				r.Header.Del("Accept-Language")
			}
			w := g.do(r)
			if got := bodyLang(t, w); got != c.want {
				t.Fatalf("%q got the %q answer, want %q", c.sent, got, c.want)
			}
			if round == 1 && wantHits && w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
				t.Fatalf("%q second time: %q", c.sent, w.Header().Get("Cache-Status"))
			}
		}
	}
	if seen := o.seen(); !slices.Equal(seen, []string{"de", "en", "fr"}) && !(!wantHits && len(seen) <= 3) {
		t.Fatalf("the origin saw %q", seen)
	}
	for _, l := range o.seen() {
		if l != "en" && l != "fr" && l != "de" {
			t.Fatalf("the origin saw %q", l)
		}
	}
}

func TestVaryCanonicalLanguagesEmbedded(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, withCanonicalLanguages), o)
	checkCanonicalised(t, g, o, true)
	if n := o.total.Load(); n != 3 {
		t.Fatalf("origin answered %d times, want 3 (one per canonical language)", n)
	}
	if n, _ := g.cache.l1.stats(); n != 3 {
		t.Fatalf("L1 holds %d entries", n)
	}
}

func TestVaryCanonicalLanguagesOnRedis(t *testing.T) {
	p := newPair(t, withCanonicalLanguages)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	checkCanonicalised(t, p.a, o, true)
	if keys := p.srv.Client(t).Keys(context.Background(), "test_event:7~v*").Val(); len(keys) != 3 {
		t.Fatalf("variants in Redis: %v", keys)
	}
	// The other edge maps the same way, to the same entries.
	for _, l := range []string{"fr-FR", "zz", "DE"} {
		if w := p.b.do(langReq("/api/events/7", l)); w.Header().Get("Cache-Status") != "ticketi-edge; hit" {
			t.Fatalf("b %q: %q", l, w.Header().Get("Cache-Status"))
		}
	}
	if n := o.total.Load(); n != 3 {
		t.Fatalf("origin answered %d times, want 3", n)
	}
}

// Redis down: no L1 is served (the edge cannot hear invalidations), but the
// mapping is the same: the origin sees canonical values only, and L1 keeps
// at most one variant per canonical value.
func TestVaryCanonicalLanguagesWhileRedisIsDown(t *testing.T) {
	p := newPair(t, withCanonicalLanguages)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	if err := p.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "breaker open", func() bool { return !p.rdb[0].Available() })
	checkCanonicalised(t, p.a, o, false)
	if n, _ := p.a.cache.l1.stats(); n > 3 {
		t.Fatalf("L1 holds %d entries", n)
	}
}

// The client's request is not modified: only the cache's view of it.
func TestVaryCanonicalLeavesTheClientRequestAlone(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, withCanonicalLanguages), o)
	r := langReq("/api/events/7", "fr-CA")
	g.do(r)
	if got := r.Header.Get("Accept-Language"); got != "fr-CA" {
		t.Fatalf("client request now says %q", got)
	}
	if o.count("fr") != 1 {
		t.Fatalf("origin saw %q", o.seen())
	}
}

func TestLanguageLookup(t *testing.T) {
	tags := []string{"en", "fr", "de", "pt-BR", "zh-Hant"}
	for _, c := range []struct {
		lines []string
		want  string
	}{
		{nil, "en"},
		{[]string{"fr-CA,en;q=0.2"}, "fr"},
		{[]string{"en;q=0.2, fr-CA"}, "fr"},
		{[]string{"pt"}, "en"},             // lookup truncates the range, never the tag
		{[]string{"pt-BR-x-foo"}, "pt-BR"}, // private-use singleton goes with its subtag
		{[]string{"zh-hant-TW"}, "zh-Hant"},
		{[]string{"es", "de;q=0.3"}, "de"},
		{[]string{"de;q=0.5, fr;q=0.5"}, "de"}, // equal weights: order sent
		{[]string{"fr;q=0"}, "en"},
		{[]string{"fr;q=2, de;q=0.1"}, "de"}, // a bad weight excludes the range
		{[]string{"fr;q=x"}, "en"},
		{[]string{"*;q=1, de;q=0.1"}, "de"},
		{[]string{strings.Repeat("xx,", 40) + "fr"}, "en"}, // at most 32 ranges read
		{[]string{",,;,=;q=,FR"}, "fr"},
		{[]string{"fr-" + strings.Repeat("a-", 100) + "b, de;q=0.1"}, "de"}, // a range over 128 bytes is skipped
		{[]string{"fr-" + strings.Repeat("a-", 60) + "b, de;q=0.1"}, "fr"},
	} {
		if got := tags[languageLookup(c.lines, tags)]; got != c.want {
			t.Errorf("%q: %q, want %q", c.lines, got, c.want)
		}
	}
}

func TestVaryCanonicalOtherHeaders(t *testing.T) {
	vc := varyCanon{name: "X-Device", values: []string{"desktop", "mobile"}}
	for _, c := range []struct {
		lines []string
		want  string
	}{
		{nil, "desktop"},
		{[]string{" Mobile "}, "mobile"},
		{[]string{"tablet"}, "desktop"},
		{[]string{"mobile", "mobile"}, "desktop"},
		{[]string{"mobile, desktop"}, "desktop"},
	} {
		if got := vc.canonical(c.lines); got != c.want {
			t.Errorf("%q: %q, want %q", c.lines, got, c.want)
		}
	}
}

func nineLines() []VaryCanon {
	out := make([]VaryCanon, maxVaryNames+1)
	for i := range out {
		out[i] = VaryCanon{Header: fmt.Sprintf("X-H%d", i), Values: []string{"a"}}
	}
	return out
}

func TestVaryCanonicalConfigIsChecked(t *testing.T) {
	many := make([]string, maxVaryCanonValues+1)
	for i := range many {
		many[i] = fmt.Sprintf("v%d", i)
	}
	for _, v := range [][]VaryCanon{
		{{Header: "Cookie", Values: []string{"a"}}},
		{{Header: "authorization", Values: []string{"a"}}},
		{{Header: "x_ticketi_user_id", Values: []string{"a"}}},
		{{Header: "Accept-Encoding", Values: []string{"gzip"}}},
		{{Header: "Bad Header", Values: []string{"a"}}},
		{{Header: "X-A", Values: nil}},
		{{Header: "X-A", Values: many}},
		{{Header: "X-A", Values: []string{"a", "A"}}},
		{{Header: "X-A", Values: []string{"a,b"}}},
		{{Header: "X-A", Values: []string{strings.Repeat("a", maxVaryCanonValueLen+1)}}},
		{{Header: "Accept-Language", Values: []string{"en_US"}}},
		{{Header: "Accept-Language", Values: []string{"*"}}},
		{{Header: "X-A", Values: []string{"a"}}, {Header: "x-a", Values: []string{"b"}}},
		nineLines(),
	} {
		rules, inv := seedRules()
		rules[2].Vary = v
		if _, err := New(Config{Rules: rules, Invalidations: inv}); err == nil {
			t.Errorf("%+v accepted", v)
		}
	}
	rules, inv := seedRules()
	rules[2].Vary = []VaryCanon{{Header: "Accept-Language", Values: []string{"en", "pt-BR"}}, {Header: "X-Device", Values: []string{"desktop"}}}
	if _, err := New(Config{Rules: rules, Invalidations: inv}); err != nil {
		t.Fatal(err)
	}
}

// Without a vary line: once the bound is full, an invalidation of the
// variants' tags frees their slots at once, not at their index entries'
// expiry (35 minutes for an event page).
func TestVariantBoundFreedByInvalidationOnRedis(t *testing.T) {
	obs := &variantObserver{}
	p := newPair(t, func(c *Config) { c.Observer = obs })
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	withOrigin(p.b, o)
	langs := languagesFillingTheBound("j")
	checkLanguages(t, p.a, langs...)
	if w := p.a.do(langReq("/api/events/7", "en")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("over the bound: %q", w.Header().Get("Cache-Status"))
	}
	// Live variants are not dropped however long they have been there.
	p.a.clock.Advance(time.Minute)
	p.b.clock.Advance(time.Minute)
	if w := p.a.do(langReq("/api/events/7", "en")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("over the bound a minute later: %q", w.Header().Get("Cache-Status"))
	}
	if n := obs.n("event/vary-limit"); n != 2 {
		t.Fatalf("vary-limit counted %d", n)
	}
	// A write on the other edge drops them all.
	if w := p.b.do(newReq("PUT", "/api/events/7")); w.Code != 200 {
		t.Fatal(w.Code)
	}
	for round := 0; round < 2; round++ {
		w := p.a.do(langReq("/api/events/7", "en"))
		if bodyLang(t, w) != "en" {
			t.Fatal(bodyLang(t, w))
		}
		want := "stored"
		if round == 1 {
			want = "ticketi-edge; hit"
		}
		if !strings.Contains(w.Header().Get("Cache-Status"), want) {
			t.Fatalf("after the invalidation, round %d: %q", round, w.Header().Get("Cache-Status"))
		}
	}
	if n := obs.n("event/freed"); n != MaxRuleVariants {
		t.Fatalf("freed counted %d", n)
	}
}

// An entry still in Redis whose tag version was bumped (its unlink not yet
// done, e.g. a large tag drained in the background) frees its slot too.
func TestVariantBoundFreedByBumpedVersionsOnRedis(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	langs := languagesFillingTheBound("j")
	checkLanguages(t, p.a, langs...)
	raw := p.srv.Client(t)
	ctx := context.Background()
	if err := raw.Incr(ctx, p.rdb[0].Keys().TagVersion("event:7")).Err(); err != nil {
		t.Fatal(err)
	}
	if keys := raw.Keys(ctx, "test_event:7~v*").Val(); len(keys) != MaxRuleVariants {
		t.Fatalf("variants in Redis: %d", len(keys))
	}
	if w := p.a.do(langReq("/api/events/7", "en")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after the version bump: %q", w.Header().Get("Cache-Status"))
	}
}

// A variant admitted moments ago whose entry is not written yet (its fill
// is between admission and store) keeps its slot.
func TestVariantInFlightKeepsItsSlot(t *testing.T) {
	p := newPair(t, nil)
	o := newLangOrigin("Accept-Language")
	withOrigin(p.a, o)
	langs := languagesFillingTheBound("j")
	checkLanguages(t, p.a, langs...)
	raw := p.srv.Client(t)
	ctx := context.Background()
	keys := raw.Keys(ctx, "test_event:7~v*").Val()
	raw.Del(ctx, keys...) // as if just admitted, not stored yet
	p.a.cache.l1.purge()
	if w := p.a.do(langReq("/api/events/7", "en")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("within the admission window: %q", w.Header().Get("Cache-Status"))
	}
	p.a.clock.Advance(variantInFlight + time.Second)
	if w := p.a.do(langReq("/api/events/7", "en")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("after the admission window: %q", w.Header().Get("Cache-Status"))
	}
}

// BenchmarkHitL1VariantCanonical is BenchmarkHitL1Variant on a rule with
// `vary Accept-Language en fr de`: the request's list is looked up and the
// request copied with the canonical value on every hit.
func BenchmarkHitL1VariantCanonical(b *testing.B) { benchVariantHit(b, withCanonicalLanguages) }

// On Redis Cluster the index script touches only the rule key; the check
// of the counted variants is pipelined across the nodes.
func TestVariantBoundFreedByInvalidationOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb, err := store.New(store.Options{Addrs: cl.Addrs, KeyPrefix: "test_"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, func(c *Config) { c.Redis = rdb }), o)
	langs := languagesFillingTheBound("l")
	checkLanguages(t, g, langs...)
	if w := g.do(langReq("/api/events/7", "extra")); !strings.HasSuffix(w.Header().Get("Cache-Status"), "detail=vary-limit") {
		t.Fatalf("bound on the cluster: %q", w.Header().Get("Cache-Status"))
	}
	g.do(newReq("PUT", "/api/events/7"))
	g.clock.Advance(variantInFlight + time.Second)
	if w := g.do(langReq("/api/events/7", "extra")); !strings.Contains(w.Header().Get("Cache-Status"), "stored") {
		t.Fatalf("a new language after the invalidation on the cluster: %q", w.Header().Get("Cache-Status"))
	}
}

// A background refresh (stale-while-revalidate) sends the canonical value
// too; a request that bypasses the cache goes upstream as sent.
func TestVaryCanonicalRefreshAndBypass(t *testing.T) {
	o := newLangOrigin("Accept-Language")
	g := withOrigin(newRig(t, func(c *Config) {
		withCanonicalLanguages(c)
		c.Rules[2].StaleWhileRevalidate = time.Minute
	}), o)
	g.do(langReq("/api/events/7", "fr-CA"))
	g.clock.Advance(31 * time.Minute)
	if w := g.do(langReq("/api/events/7", "fr-BE")); bodyLang(t, w) != "fr" || !strings.Contains(w.Header().Get("Cache-Status"), "fwd=stale") {
		t.Fatalf("within the window: %q %q", bodyLang(t, w), w.Header().Get("Cache-Status"))
	}
	waitFor(t, 5*time.Second, "the background refresh", func() bool { return o.count("fr") == 2 })
	r := langReq("/api/events/7", "fr-BE")
	r.Header.Set("Authorization", "Bearer x")
	if w := g.do(r); !strings.Contains(w.Header().Get("Cache-Status"), "detail=credentials") || bodyLang(t, w) != "fr-BE" {
		t.Fatalf("bypass: %q %q", bodyLang(t, w), w.Header().Get("Cache-Status"))
	}
	if seen := o.seen(); !slices.Equal(seen, []string{"fr", "fr-BE"}) {
		t.Fatalf("the origin saw %q", seen)
	}
}

// The line does not make an answer vary: an upstream that does not say
// Vary gets one entry for every language.
func TestVaryCanonicalWithoutUpstreamVary(t *testing.T) {
	o := newLangOrigin("")
	g := withOrigin(newRig(t, withCanonicalLanguages), o)
	g.do(langReq("/api/events/7", "de"))
	if w := g.do(langReq("/api/events/7", "fr")); w.Header().Get("Cache-Status") != "ticketi-edge; hit" || bodyLang(t, w) != "de" {
		t.Fatalf("%q %q", bodyLang(t, w), w.Header().Get("Cache-Status"))
	}
}
