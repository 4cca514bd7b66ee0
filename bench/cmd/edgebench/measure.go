package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// wrkResult is what the driver reads from `wrk --latency`.
type wrkResult struct {
	RPS      float64
	P50, P99 float64 // ms
	Requests int64
	Non2xx   int64
	SockErrs int64
}

var (
	reRPS     = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reReqs    = regexp.MustCompile(`(?m)^\s*([0-9]+) requests in`)
	reNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+([0-9]+)`)
	reSockErr = regexp.MustCompile(`Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)`)
	reLatency = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$`)
)

// parseWrk reads wrk's text output.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output")
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m = reReqs.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m = reNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m = reSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.SockErrs += n
		}
	}
	for _, m := range reLatency.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		case "m":
			v *= 60000
		}
		if m[1] == "50" {
			r.P50 = v
		} else {
			r.P99 = v
		}
	}
	return r, nil
}

// wrkSpec is one wrk invocation.
type wrkSpec struct {
	url     string
	headers []string
	script  string // lua file, for methods other than GET
}

func (w *wrkSpec) args(cfg *config, d time.Duration, latency bool) []string {
	a := []string{"-t" + strconv.Itoa(cfg.threads), "-c" + strconv.Itoa(cfg.conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s"}
	if latency {
		a = append(a, "--latency")
	}
	for _, h := range w.headers {
		a = append(a, "-H", h)
	}
	if w.script != "" {
		a = append(a, "-s", w.script)
	}
	return append(a, w.url)
}

// runWrk warms up (not measured), then measures; raw output goes to work/.
func runWrk(ctx context.Context, cfg *config, name string, w wrkSpec, between func()) (wrkResult, error) {
	if cfg.warmup > 0 {
		out, _ := exec.CommandContext(ctx, "wrk", w.args(cfg, cfg.warmup, false)...).CombinedOutput()
		_ = os.WriteFile(cfg.work(name+".warmup.txt"), out, 0o644)
	}
	if between != nil {
		between()
	}
	out, err := exec.CommandContext(ctx, "wrk", w.args(cfg, cfg.duration, true)...).CombinedOutput()
	_ = os.WriteFile(cfg.work(name+".wrk.txt"), out, 0o644)
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v: %s", err, lastLines(string(out), 3))
	}
	return parseWrk(string(out))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// commandStats is the private Redis server's INFO commandstats: calls by command.
func commandStats(ctx context.Context, rdb *redis.Client) (map[string]int64, error) {
	s, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				out[name], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out, nil
}

// redisDelta is after-before minus the driver's own INFO calls (one per
// snapshot: the "after" snapshot's INFO is counted in neither).
func redisDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if n := v - before[k]; n > 0 {
			d[k] = n
		}
	}
	if d["info"] > 0 {
		d["info"]--
	}
	if d["info"] == 0 {
		delete(d, "info")
	}
	return d
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// perRequest formats a command breakdown per request, largest first.
func perRequest(d map[string]int64, reqs int64) string {
	if reqs <= 0 || len(d) == 0 {
		return ""
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return d[keys[i]] > d[keys[j]] || d[keys[i]] == d[keys[j]] && keys[i] < keys[j] })
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%.3f", k, float64(d[k])/float64(reqs))
	}
	return b.String()
}

// metricSums sums Prometheus samples of name by one label's value.
func metricSums(ctx context.Context, adminURL, name, label string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	return parseMetricSums(string(body), name, label), nil
}

func parseMetricSums(text, name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		key := ""
		if i := strings.Index(line, label+`="`); i >= 0 {
			rest := line[i+len(label)+2:]
			if j := strings.IndexByte(rest, '"'); j >= 0 {
				key = rest[:j]
			}
		}
		out[key] += v
	}
	return out
}
