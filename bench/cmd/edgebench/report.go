package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type report struct {
	Started     time.Time         `json:"started"`
	Finished    time.Time         `json:"finished"`
	Command     string            `json:"command"`
	Machine     string            `json:"machine"`
	LoadStart   string            `json:"loadavg_start"`
	LoadEnd     string            `json:"loadavg_end"`
	Commit      string            `json:"commit"`
	Apt         string            `json:"apt"`
	PeerBuild   string            `json:"peer_build,omitempty"`
	Versions    map[string]string `json:"versions"`
	Wrk         string            `json:"wrk"`
	BodyBytes   int               `json:"body_bytes"`
	Rows        []*row            `json:"rows"`
	Workload    *wlReport         `json:"workload,omitempty"`
	WorkloadErr string            `json:"workload_error,omitempty"`
	Scale       *scaleReport      `json:"scale,omitempty"`
	ScaleErr    string            `json:"scale_error,omitempty"`
}

// fill computes every ratio from rows of this run and the verdicts.
func (rep *report) fill(cfg *config) {
	rep.Command = strings.TrimSpace("go run ./bench/cmd/edgebench " + strings.Join(os.Args[1:], " "))
	rep.Machine = machine()
	out, _ := exec.Command("git", "-C", cfg.root, "rev-parse", "--short=12", "HEAD").Output()
	rep.Commit = strings.TrimSpace(string(out))
	if st, _ := exec.Command("git", "-C", cfg.root, "status", "--porcelain").Output(); len(st) > 0 {
		rep.Commit += fmt.Sprintf(" (+%d uncommitted changes)", strings.Count(string(st), "\n"))
	}
	rep.Wrk = fmt.Sprintf("wrk -t%d -c%d -d%s --latency (warm-up %s), one row at a time", cfg.threads, cfg.conns, cfg.duration, cfg.warmup)
	byName := map[string]*row{}
	for _, r := range rep.Rows {
		byName[r.Scenario] = r
	}
	x := func(r *row, base string) float64 {
		b := byName[base]
		if b == nil || b.Status != "ok" || b.RPS <= 0 || r.Status != "ok" {
			return 0
		}
		return r.RPS / b.RPS
	}
	sc := map[string]scenario{}
	for _, s := range scenarios() {
		sc[s.Name] = s
	}
	for _, r := range rep.Rows {
		r.XRespond, r.XProxy, r.XVarnish = x(r, "respond"), x(r, "proxy"), x(r, "varnish")
		for _, c := range sc[r.Scenario].Compare {
			v := x(r, c.Base)
			if v == 0 {
				continue
			}
			ra := ratio{Base: c.Base, X: v, Aim: c.Aim, Floor: c.Floor}
			ra.Verdict = verdict(v, c.Aim, c.Floor)
			r.Ratios = append(r.Ratios, ra)
		}
	}
}

func verdict(v, aim, floor float64) string {
	switch {
	case aim == 0:
		return ""
	case v >= aim:
		return "ok"
	case floor > 0 && v >= floor:
		return "above floor, below aim"
	default:
		return "BELOW"
	}
}

func machine() string {
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem, _, _ = strings.Cut(string(b), "\n")
		mem = strings.Join(strings.Fields(mem)[1:], " ")
	}
	return fmt.Sprintf("%d CPUs (%s), %s RAM, %s/%s", runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH)
}

func (rep *report) write(cfg *config) error {
	j, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.out, "results.md"), []byte(rep.markdown()), 0o644)
}

func f2(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func (rep *report) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Ticketi edge benchmark\n\n")
	p("- command: `%s`\n", rep.Command)
	p("- date: %s to %s (UTC)\n", rep.Started.Format(time.RFC3339), rep.Finished.Format("15:04:05"))
	p("- machine: %s\n", rep.Machine)
	p("- load average (1/5/15 min): at start %s, at end %s\n", rep.LoadStart, rep.LoadEnd)
	p("- commit: %s\n", rep.Commit)
	p("- tools: %s\n", rep.Apt)
	if rep.PeerBuild != "" {
		p("- peers: %s\n", rep.PeerBuild)
	}
	keys := make([]string, 0, len(rep.Versions))
	for k := range rep.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p("- %s: %s\n", k, rep.Versions[k])
	}
	p("- rows: %s; GET /api/events/42 (the sim's 1.9 KB event JSON) unless the row says otherwise\n\n", rep.Wrk)

	p("## Throughput rows\n\n")
	p("| row | req/s | p50 ms | p99 ms | x respond | x proxy | x varnish | against other rows (target: verdict) | L1/L2/other lookups | Redis cmds/req |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---|---|---:|\n")
	for _, r := range rep.Rows {
		rps := r.Status
		if r.Status == "ok" {
			rps = fmt.Sprintf("%.0f", r.RPS)
		}
		var cmp []string
		for _, c := range r.Ratios {
			s := fmt.Sprintf("%.2f× %s", c.X, c.Base)
			if c.Aim > 0 {
				s += fmt.Sprintf(" (≥%.2g", c.Aim)
				if c.Floor > 0 {
					s += fmt.Sprintf(", floor %.2g", c.Floor)
				}
				s += "): " + c.Verdict
			}
			cmp = append(cmp, s)
		}
		look := "-"
		if r.Lookups != nil {
			other := 0.0
			for k, v := range r.Lookups {
				if k != "hit_l1" && k != "hit_l2" {
					other += v
				}
			}
			look = fmt.Sprintf("%.0f/%.0f/%.0f", r.Lookups["hit_l1"], r.Lookups["hit_l2"], other)
		}
		rc := "-"
		if r.RedisPerReq > 0 {
			rc = fmt.Sprintf("%.3f", r.RedisPerReq)
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, rps, f2(r.P50ms), f2(r.P99ms), f2(r.XRespond), f2(r.XProxy), f2(r.XVarnish),
			strings.Join(cmp, "; "), look, rc)
	}
	p("\nRatios are req/s of the row over req/s of the named row, in this one run. Targets (from the design): L1 hit ≥ 1.0× respond (floor 0.85) and ≥ 0.85× varnish; " +
		"L1 gzip ≥ 1.0× respond_gzip; L2 hit ≥ 1.0× proxy; limiter + proxy aim 0.95× proxy, floor 0.9× (one tier) and 0.85× (three); " +
		"an L1 hit behind the api tier ≥ 0.85×, behind three tiers ≥ 0.8× the same hit without a limiter. Verdicts report, they never fail the run.\n\n")
	p("| row | what | notes | Redis commands per request |\n|---|---|---|---|\n")
	for _, r := range rep.Rows {
		p("| %s | %s | %s | %s |\n", r.Scenario, r.What, strings.Join(r.Notes, "; "), r.RedisBreakdown)
	}
	if w := rep.Workload; w != nil {
		p("\n## Ticketi workload\n\n%s.\n\n", w.Setup)
		p("| run | reads | hit %% | origin reads | saved %% | read p50 / p99 ms | hit p50 / p99 | miss p50 / p99 | writes (409) | write p50 / p99 | stale | errors | 429 | dropped | Redis cmds/req |\n")
		p("|---|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|\n")
		for _, r := range w.Runs {
			p("| %s | %d | %s | %d | %s | %s / %s | %s / %s | %s / %s | %d (%d) | %s / %s | %d | %d | %d | %d | %s |\n",
				r.Name, r.Reads, f1(r.HitRatePct), r.OriginReads, f1(r.OriginSaved), f2(r.ReadP50), f2(r.ReadP99), f2(r.HitP50), f2(r.HitP99),
				f2(r.MissP50), f2(r.MissP99), r.Writes, r.WritesRefused, f2(r.WriteP50), f2(r.WriteP99), r.Stale, r.Errors, r.Limited, r.Dropped, f2(r.RedisPerReq))
		}
		p("\n| writes | origin reads saved | read p50 cut | read p99 cut | stale reads | errors | targets |\n|---:|---:|---:|---:|---:|---:|---|\n")
		for _, c := range w.Compares {
			p("| %.0f%% | %.1f%% | %.1f%% | %.1f%% | %d | %d | %s |\n", c.WritePct, c.OriginSaved, c.ReadP50Cut, c.ReadP99Cut, c.Stale, c.Errors, strings.Join(c.Verdicts, "; "))
		}
		p("\nSaved: 1 − origin GETs / reads answered (the sim's own counters). Cut: 1 − edge read percentile / the same percentile straight to the sim. " +
			"Latency is from each request's scheduled time (open loop). A stale read is one that saw less than a write acknowledged before it was sent " +
			"(event version after updates, tickets left after purchases on the detail, follower counts after follows). Redis commands: INFO commandstats delta over requests of the run.\n")
		for _, r := range w.Runs {
			for _, s := range r.StaleSamples {
				p("- stale, %s: %s\n", r.Name, s)
			}
			if r.RedisBreakdown != "" {
				p("- Redis commands per request, %s: %s\n", r.Name, r.RedisBreakdown)
			}
			if len(r.ErrorKinds) > 0 {
				p("- errors, %s: %s\n", r.Name, strings.Join(r.ErrorKinds, "; "))
			}
			for _, s := range r.ErrorSamples {
				p("- error, %s, at %s\n", r.Name, s)
			}
		}
	}
	if rep.WorkloadErr != "" {
		p("\nWorkload failed: %s\n", rep.WorkloadErr)
	}
	if s := rep.Scale; s != nil {
		p("\n## Scale and memory\n\n%s.\n\n", s.Setup)
		p("| clients | seconds | requests | req/s | errors | 429 | hit %% | p50 ms | p99 ms | RSS start / peak / end MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		p("| %d | %.0f | %d | %.0f | %d | %d | %.1f | %s | %s | %.1f / %.1f / %.1f |\n", s.Clients, s.Seconds, s.Requests, s.RPS, s.Errors, s.Limited, s.HitPct,
			f2(s.P50ms), f2(s.P99ms), float64(s.RSSStart)/1024, float64(s.RSSPeak)/1024, float64(s.RSSEnd)/1024)
		if c := s.Churn; c != nil {
			p("\nL1 under churn: %d distinct keys (~1.6 KB answers, %.1f MiB offered) through an embedded edge with `l1_size 2MiB` in %.1f s; "+
				"largest l1_bytes seen %d (%d entries) over %d samples of /edge/cache/stats; bound %d: **%s**; errors %d; RSS %.1f → peak %.1f MiB.\n",
				c.Keys, float64(c.StoredBytes)/(1<<20), c.Seconds, c.MaxL1Bytes, c.MaxEntries, c.Samples, c.L1SizeBytes,
				map[bool]string{true: "within", false: "EXCEEDED"}[c.WithinBound], c.Errors, float64(c.RSSStart)/1024, float64(c.RSSPeak)/1024)
		}
		if s.ChurnErr != "" {
			p("\nL1 churn failed: %s\n", s.ChurnErr)
		}
	}
	if rep.ScaleErr != "" {
		p("\nScale run failed: %s\n", rep.ScaleErr)
	}
	return b.String()
}
