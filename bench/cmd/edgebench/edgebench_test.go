package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

const wrkSample = `Running 1s test @ http://127.0.0.1:1/api/events/42
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.06ms    2.01ms  30.22ms   91.23%
  Latency Distribution
     50%  512.00us
     75%    1.10ms
     90%    2.20ms
     99%    1.05s
  30034 requests in 1.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:  30034.12
Transfer/sec:     60.00MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 30034.12 || r.Requests != 30034 || r.Non2xx != 12 || r.SockErrs != 7 {
		t.Errorf("got %+v", r)
	}
	if r.P50 != 0.512 || r.P99 != 1050 {
		t.Errorf("p50 %v ms, p99 %v ms; want 0.512 and 1050", r.P50, r.P99)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused"); err == nil {
		t.Error("wrk output without a rate must be an error")
	}
}

func TestRedisDeltaDropsTheDriversOwnInfo(t *testing.T) {
	d := redisDelta(map[string]int64{"get": 10, "info": 3}, map[string]int64{"get": 30, "info": 4, "set": 5})
	if d["get"] != 20 || d["set"] != 5 || d["info"] != 0 || len(d) != 2 {
		t.Errorf("delta %v", d)
	}
	if got := perRequest(d, 10); got != "get=2.000 set=0.500" {
		t.Errorf("perRequest = %q", got)
	}
}

func TestParseMetricSums(t *testing.T) {
	text := `# HELP x
ticketi_edge_cache_lookups_total{result="hit_l1",rule="event"} 10
ticketi_edge_cache_lookups_total{result="hit_l1",rule="list"} 5
ticketi_edge_cache_lookups_total{result="miss",rule="event"} 2
ticketi_edge_cache_lookups_total_other{result="miss"} 99
`
	m := parseMetricSums(text, "ticketi_edge_cache_lookups_total", "result")
	if m["hit_l1"] != 15 || m["miss"] != 2 || len(m) != 2 {
		t.Errorf("sums %v", m)
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		v, aim, floor float64
		want          string
	}{{1.1, 1, 0.85, "ok"}, {0.9, 1, 0.85, "above floor, below aim"}, {0.8, 1, 0.85, "BELOW"}, {0.8, 0.85, 0, "BELOW"}, {3, 0, 0, ""}} {
		if got := verdict(c.v, c.aim, c.floor); got != c.want {
			t.Errorf("verdict(%v, %v, %v) = %q, want %q", c.v, c.aim, c.floor, got, c.want)
		}
	}
}

// The table is the one place rows are defined: names are unique, every
// ratio names a row of the table, every Caddy row has a site.
func TestScenarioTable(t *testing.T) {
	names := map[string]bool{}
	for _, s := range scenarios() {
		if names[s.Name] {
			t.Errorf("row %s twice", s.Name)
		}
		names[s.Name] = true
		if s.Server != "varnish" && s.Server != "origin" && s.Site == nil {
			t.Errorf("row %s has no site", s.Name)
		}
	}
	for _, s := range scenarios() {
		for _, c := range s.Compare {
			if !names[c.Base] {
				t.Errorf("row %s compares with unknown row %s", s.Name, c.Base)
			}
		}
	}
	for _, want := range []string{"respond", "proxy", "varnish", "edge_l1", "edge_l1_gzip", "edge_l1_encode", "edge_l2",
		"limiter", "limiter3", "edge_l1_api", "edge_l1_3tiers", "peer_cache_handler", "peer_ratelimit", "session", "write_edge", "write_origin", "swr_rule", "swr_rfc9111"} {
		if !names[want] {
			t.Errorf("row %s missing", want)
		}
	}
}

func TestMarkdownHasEveryRowAndTarget(t *testing.T) {
	rep := &report{Rows: []*row{
		{Scenario: "respond", Status: "ok", RPS: 100},
		{Scenario: "varnish", Status: "ok", RPS: 200},
		{Scenario: "edge_l1", Status: "ok", RPS: 90},
		{Scenario: "proxy", Status: "failed", Notes: []string{"did not start"}},
	}}
	rep.fill(&config{root: t.TempDir()})
	md := rep.markdown()
	for _, want := range []string{"| edge_l1 | 90 |", "0.90× respond (≥1, floor 0.85): above floor, below aim", "0.45× varnish (≥0.85): BELOW", "| proxy | failed |", "did not start"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestClientAddrsAreDistinctLoopback(t *testing.T) {
	seen := map[string]bool{}
	for i := range 5000 {
		ip := clientAddr(i)
		if !ip.IsLoopback() || ip.Equal([]byte{127, 0, 0, 1}) {
			t.Fatalf("client %d: %s", i, ip)
		}
		if seen[ip.String()] {
			t.Fatalf("client %d reuses %s", i, ip)
		}
		seen[ip.String()] = true
	}
}

func TestErrorKindsAreBoundedAndRanked(t *testing.T) {
	r := &wlRun{}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 3 {
		r.noteError("edge-2 POST follow 503", "", at)
	}
	r.noteError("edge-1 GET event 502", " body x", at)
	for i := range maxErrorKinds + 5 {
		r.noteError(fmt.Sprintf("sim GET list kind%d", i), "", at)
	}
	got := r.errorKinds()
	if len(got) != shownErrorKinds+1 || got[0] != "7× other kinds" || got[1] != "3× edge-2 POST follow 503" {
		t.Fatalf("kinds %q", got)
	}
	if len(r.ekind) > maxErrorKinds+1 || r.ekind["other kinds"] == 0 || len(r.ErrorSamples) != maxErrorSamples {
		t.Errorf("%d kinds counted (other %d), %d samples", len(r.ekind), r.ekind["other kinds"], len(r.ErrorSamples))
	}
	if !strings.HasPrefix(r.ErrorSamples[3], "00:00:00.000 edge-1 GET event 502 body x") {
		t.Errorf("sample %q", r.ErrorSamples[3])
	}
	o := op{base: "http://b", method: "PUT", kind: "update"}
	if k := errorKind(o, []string{"http://a", "http://b"}, 503, nil); k != "edge-2 PUT update 503" {
		t.Errorf("errorKind = %q", k)
	}
	if k := errorKind(o, []string{"http://b"}, 0, &url.Error{Op: "Put", URL: "http://b/x", Err: errors.New("EOF")}); k != "sim PUT update EOF" {
		t.Errorf("errorKind = %q", k)
	}
}
