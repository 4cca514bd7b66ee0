package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ticketi/edge/internal/redistest"
)

var dashboardListening = regexp.MustCompile(`dashboard: (http://\S+/edge/ui/)`)

// startDashboard runs `edge ui` for e on a free loopback port and returns
// the dashboard's URL.
func startDashboard(t *testing.T, e *Edge) string {
	t.Helper()
	dir := t.TempDir()
	p, err := startProcess("edge ui", bins.Edge, []string{"edge", "ui", "--listen", "127.0.0.1:0", "--address", e.AdminAddr}, baseEnv(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(); logOnFailure(t, p) })
	var url string
	err = poll(readyTimeout, func() error {
		if m := dashboardListening.FindStringSubmatch(p.out.String()); m != nil {
			url = m[1]
			return nil
		}
		if p.exited() {
			return stopPolling{p.exitError()}
		}
		return fmt.Errorf("edge ui has not said where it listens yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// number reads a figure the page shows ("1,234", "66.7%", "0.21 ms").
func number(s string) float64 {
	s = strings.TrimSpace(strings.ReplaceAll(s, ",", ""))
	if i := strings.IndexAny(s, "% "); i >= 0 {
		s = s[:i]
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return f
}

// TestDashboardInBrowser loads the live dashboard in a real headless
// Chromium (one launch), the way an operator opens it (`caddy edge ui`),
// against a real edge on a private Redis: it loads without console errors,
// its figures move with traffic, and a purge and a session logout made
// from the page take effect at the edge.
func TestDashboardInBrowser(t *testing.T) {
	requireBinaries(t)
	chromiumPath(t) // skip early, before starting anything, when there is none
	srv := redistest.Start(t, redistest.Options{})
	sim := StartSim(t)
	e := StartEdge(t, exampleCaddyfile(t, ""), map[string]string{
		"TICKETI_UPSTREAM": sim.Addr, "REDIS_URL": srv.URL(), "REDIS_KEY_PREFIX": "test_", "EDGE_SESSION_KEYS": testSigningKeys,
	})
	e.WaitHearing(t) // until then the edge does not trust its L1 copies (read-your-writes)
	url := startDashboard(t, e)
	b := startBrowser(t)
	b.navigate(t, url+"?refresh=300")

	refreshes := func() int {
		n, _ := strconv.Atoi(b.evalString(t, "document.body.dataset.refreshes || '0'"))
		return n
	}
	Eventually(t, 15*time.Second, func() error {
		if s := b.text(t, "status"); s != "live" || refreshes() < 1 {
			return fmt.Errorf("status %q after %d refreshes", s, refreshes())
		}
		return nil
	})
	if got := b.text(t, "store-mode"); got != "redis" {
		t.Errorf("store mode shown %q, want redis", got)
	}
	if got := b.text(t, "breaker"); got != "closed" {
		t.Errorf("breaker shown %q, want closed", got)
	}
	lookupsBefore := number(b.text(t, "lookups"))

	// Traffic: cache misses and hits, a login, and a flood on the auth tier.
	for range 6 {
		e.Get(t, "/api/events/1")
		e.Get(t, "/api/events/featured")
	}
	cookie := login(t, e, "alice", "secret1")
	for range 12 {
		e.Get(t, "/api/auth/status")
	}

	var shown map[string]string
	Eventually(t, 15*time.Second, func() error {
		shown = map[string]string{}
		for _, id := range []string{"lookups", "hit-rate", "ops-per-min", "l1-entries", "sessions-created", "redis-latency", "pool-use", "redis-memory", "redis-keys", "redis-frag"} {
			shown[id] = b.text(t, id)
		}
		var tiers, offenders [][]string
		b.eval(t, `[...document.querySelectorAll('#tiers tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &tiers)
		b.eval(t, `[...document.querySelectorAll('#offenders tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &offenders)
		series := b.evalString(t, "document.getElementById('hit-chart').dataset.series || '0'")
		switch {
		case number(shown["lookups"]) < lookupsBefore+12:
			return fmt.Errorf("lookups shown %v, want ≥ %v", shown["lookups"], lookupsBefore+12)
		case number(shown["l1-entries"]) < 2:
			return fmt.Errorf("L1 entries shown %q", shown["l1-entries"])
		case number(shown["sessions-created"]) < 1:
			return fmt.Errorf("sessions created shown %q", shown["sessions-created"])
		case !strings.HasSuffix(shown["redis-latency"], " ms"):
			return fmt.Errorf("redis latency shown %q", shown["redis-latency"])
		case number(shown["redis-keys"]) < 2 || !strings.Contains(shown["redis-memory"], "iB"):
			return fmt.Errorf("redis INFO figures shown: keys %q, memory %q", shown["redis-keys"], shown["redis-memory"])
		case series == "0":
			return fmt.Errorf("hit ratio chart has no series yet")
		case !hasRow(tiers, func(r []string) bool { return len(r) == 5 && r[1] == "auth" && number(r[3]) > 0 }):
			return fmt.Errorf("tiers table %v: no auth denials", tiers)
		case len(offenders) == 0:
			return fmt.Errorf("no offenders shown")
		}
		for _, r := range offenders {
			if strings.Contains(strings.Join(r, " "), "127.0.0.1") {
				return stopPolling{fmt.Errorf("offenders table shows a raw client IP: %v", r)}
			}
		}
		return nil
	})
	t.Logf("after traffic the page showed %v", shown)

	// The chart's x axis spans the history the page has (not a fixed 10
	// minutes that would squeeze a new page's points into its last tenth),
	// and the legend gives each rule's ratio over that window: 6 reads of
	// /api/events/1 after the page's first refresh are 1 miss and 5 hits,
	// whatever refreshes they fell between.
	Eventually(t, 15*time.Second, func() error {
		var chart struct {
			Span, History float64
			Legend        []string
		}
		b.eval(t, `({span: Number(document.getElementById('hit-chart').dataset.spanMs),
			history: samples[samples.length - 1].t - samples[0].t,
			legend: [...document.querySelectorAll('#hit-legend li')].map(l => l.textContent)})`, &chart)
		if chart.History <= 0 || chart.Span != chart.History {
			return fmt.Errorf("chart spans %v ms, the page's history is %v ms", chart.Span, chart.History)
		}
		for _, want := range []string{"event 83%", "events_featured 83%"} {
			if !slices.Contains(chart.Legend, want) {
				return fmt.Errorf("chart legend %q, want %q", chart.Legend, want)
			}
		}
		return nil
	})
	var advice [][]string
	b.eval(t, `[...document.querySelectorAll('#ttl-advice tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &advice)
	if !hasRow(advice, func(r []string) bool {
		return len(r) == 6 && r[0] == "event" && r[1] == "1800 s" && strings.HasPrefix(r[5], "keep: ")
	}) {
		t.Errorf("TTL advice table %v: no row for rule event", advice)
	}

	// Look up an entry from the page, then shorten its TTL there.
	entryRows := func() [][]string {
		var rows [][]string
		b.eval(t, `[...document.querySelectorAll('#entry-layers tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &rows)
		return rows
	}
	b.eval(t, `(() => {
		document.getElementById('entry-key').value = 'event:1';
		document.getElementById('entry-form').requestSubmit();
	})()`, nil)
	Eventually(t, 10*time.Second, func() error {
		rows := entryRows()
		// cache layer rule state servable fresh-for ttl kept-for size stored-at tags
		for _, layer := range []string{"L1", "redis"} {
			if !hasRow(rows, func(r []string) bool {
				return len(r) == 11 && r[1] == layer && r[2] == "event" && r[3] == "fresh" && r[4] == "yes" && r[6] == "30.0 min" && r[10] == "event:1"
			}) {
				return fmt.Errorf("entry table %v: no fresh %s row for event:1", rows, layer)
			}
		}
		return nil
	})
	b.eval(t, `(() => {
		document.getElementById('entry-ttl').value = '45s';
		document.getElementById('entry-set-ttl').click();
	})()`, nil)
	Eventually(t, 10*time.Second, func() error {
		if s := b.text(t, "entry-result"); s != "event:1 is fresh for 45s from now" {
			return fmt.Errorf("entry result shown %q", s)
		}
		rows := entryRows()
		if !hasRow(rows, func(r []string) bool {
			return len(r) == 11 && r[1] == "redis" && strings.HasSuffix(r[5], " s") && number(r[5]) <= 45
		}) {
			return fmt.Errorf("entry table after setting 45s: %v", rows)
		}
		return nil
	})
	if pttl := srv.Client(t).PTTL(t.Context(), "test_event:1").Val(); pttl <= 0 || pttl > 45*time.Second+5*time.Minute {
		t.Errorf("redis PTTL of event:1 after the page set 45s: %v", pttl)
	}

	// Purge from the page: the next read goes to the origin.
	before := sim.Stats(t).Routes["GET /api/events/{id}"]
	b.eval(t, `(() => {
		document.getElementById('purge-by').value = 'key';
		document.getElementById('purge-value').value = 'event:1';
		document.getElementById('purge-form').requestSubmit();
	})()`, nil)
	Eventually(t, 10*time.Second, func() error {
		if s := b.text(t, "purge-result"); !strings.HasPrefix(s, "purged ") {
			return fmt.Errorf("purge result shown %q", s)
		}
		return nil
	})
	e.Get(t, "/api/events/1")
	if after := sim.Stats(t).Routes["GET /api/events/{id}"]; after != before+1 {
		t.Errorf("origin reads of /api/events/{id} after the page's purge: %d → %d, want one more", before, after)
	}

	// A soft purge by tag from the page says it marked the entries stale.
	b.eval(t, `(() => {
		document.getElementById('purge-by').value = 'tag';
		document.getElementById('purge-value').value = 'events:lists';
		document.getElementById('purge-soft').checked = true;
		document.getElementById('purge-form').requestSubmit();
	})()`, nil)
	Eventually(t, 10*time.Second, func() error {
		if s := b.text(t, "purge-result"); s != "marked 1 entries stale (soft purge, tag events:lists)" {
			return fmt.Errorf("soft purge result shown %q", s)
		}
		return nil
	})

	// The purges show in the page's audit trail, hashed.
	Eventually(t, 10*time.Second, func() error {
		var rows [][]string
		b.eval(t, `[...document.querySelectorAll('#audit tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &rows)
		if !hasRow(rows, func(r []string) bool {
			return len(r) == 5 && r[2] == "admin" && r[3] == "cache_purge" && strings.Contains(r[4], "by=key")
		}) {
			return fmt.Errorf("audit table %v: no cache_purge", rows)
		}
		if !hasRow(rows, func(r []string) bool {
			return len(r) == 5 && r[3] == "cache_purge" && strings.Contains(r[4], "by=tag") && strings.Contains(r[4], "soft=true")
		}) {
			return fmt.Errorf("audit table %v: no soft cache_purge by tag", rows)
		}
		if !hasRow(rows, func(r []string) bool { return len(r) == 5 && r[3] == "cache_ttl" && strings.Contains(r[4], "ttl=45s") }) {
			return fmt.Errorf("audit table %v: no cache_ttl", rows)
		}
		for _, r := range rows {
			if strings.Contains(r[4], "event:1") || strings.Contains(r[4], "127.0.0.1") {
				return stopPolling{fmt.Errorf("audit row shows a raw key: %v", r)}
			}
		}
		return nil
	})

	// Look up alice's sessions and end them from the page.
	b.eval(t, `(() => {
		document.getElementById('session-user').value = '1';
		document.getElementById('session-form').requestSubmit();
	})()`, nil)
	Eventually(t, 10*time.Second, func() error {
		var rows [][]string
		b.eval(t, `[...document.querySelectorAll('#session-list tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, &rows)
		if len(rows) != 1 || rows[0][1] != "alice" {
			return fmt.Errorf("session list shown %v", rows)
		}
		return nil
	})
	b.eval(t, `document.getElementById('session-destroy').click()`, nil)
	Eventually(t, 10*time.Second, func() error {
		if s := b.text(t, "session-result"); !strings.Contains(s, "ended 1 sessions") {
			return fmt.Errorf("session result shown %q", s)
		}
		return nil
	})
	req, _ := http.NewRequest(http.MethodGet, e.URL("/api/users/me"), nil)
	req.Header.Set("Cookie", cookie)
	if code, _, _ := e.Do(t, req); code != http.StatusUnauthorized {
		t.Errorf("/api/users/me after ending the session from the page: %d, want 401", code)
	}

	// The page also loads straight from the admin endpoint when the browser
	// names where it came from (a link), as Caddy requires of browsers.
	b.call(t, "Page.navigate", map[string]any{"url": e.AdminURL("/edge/ui/?refresh=300"), "referrer": e.AdminURL("/")})
	Eventually(t, 15*time.Second, func() error {
		if s := b.text(t, "status"); s != "live" {
			return fmt.Errorf("status on the admin endpoint %q", s)
		}
		return nil
	})

	if errs := b.pageErrors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}

	// When the edge goes away the page says so and dims the figures it
	// still shows: they are the last refresh's, not the edge's state now.
	e.proc.stop()
	Eventually(t, 15*time.Second, func() error {
		if s := b.text(t, "status"); !strings.HasPrefix(s, "cannot read the edge") {
			return fmt.Errorf("status after the edge stopped %q", s)
		}
		if b.evalString(t, "String(document.body.classList.contains('stale'))") != "true" {
			return fmt.Errorf("the figures are not marked stale")
		}
		return nil
	})
}

func hasRow(rows [][]string, f func([]string) bool) bool {
	for _, r := range rows {
		if f(r) {
			return true
		}
	}
	return false
}
