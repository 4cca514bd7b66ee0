package caddymodule

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// edgeWarmCommand is `caddy edge warm`: POST /edge/cache/warm (admin_warm.go).
func edgeWarmCommand() *cobra.Command {
	warm := &cobra.Command{
		Use:   "warm <path...> [--file paths.txt] [--accept-language <value>]... [--cache <name>] [--host <host>] [--server <name>] [--timeout <seconds>]",
		Short: "Fetches paths through the cache so the first buyers hit a warm edge",
		Long: `
Fetches each path with an anonymous GET through the running edge's own
handler chain (the same routes, rules, keys and fills as client requests, not
rate limited), 8 at a time, at most 1000 paths per call, within --timeout
seconds (default 25), and shows what happened to each: stored, fresh (already
cached), refreshing, not-cacheable (no rule, bypass, not stored), an upstream
error status, or skipped (out of time).

Paths come from the arguments and from --file (one per line; blank lines and
lines starting with # are skipped). Only paths are accepted ("/api/events/42",
"/api/events/published?page=2"), never URLs to other hosts. --host sets the
request's Host (default localhost): it matters for host matchers and, unless
edge_cache has upstream_host fixed, for the keys.

--accept-language (repeatable, at most 8) warms each path once per value, for
rules whose answers vary on it (Vary: Accept-Language); paths times languages
is at most 1000.

With Redis, one warm fills the whole fleet. While Redis is down the answers
go into this edge's L1 only, and the report says so.

  $ caddy edge warm /api/events/featured /api/events/42
  $ caddy edge warm --file onsale-paths.txt
  $ caddy edge warm /api/events/42 --accept-language en --accept-language fr
`,
		RunE: edgeRun(cmdEdgeWarm),
	}
	f := warm.Flags()
	f.String("file", "", "Read paths from this file, one per line")
	f.String("cache", "", "Report this edge_cache handler's outcome (default: any)")
	f.String("host", "", "Host of the warm requests (default localhost)")
	f.String("server", "", "The http server to warm through, when the config has several")
	f.Int("timeout", 0, "Bound on the whole warm in seconds (default 25, at most 300)")
	f.StringArray("accept-language", nil, "Warm each path with this Accept-Language (repeatable)")
	return warm
}

// maxWarmFile bounds a --file read.
const maxWarmFile = 4 << 20

func cmdEdgeWarm(c *edgeCLI, args []string) error {
	paths := append([]string(nil), args...)
	if name := c.fl.String("file"); name != "" {
		more, err := readWarmFile(name)
		if err != nil {
			return err
		}
		paths = append(paths, more...)
	}
	if len(paths) == 0 {
		return errors.New("give paths as arguments or with --file")
	}
	if len(paths) > warmMaxPaths { // the edge checks paths × languages
		return fmt.Errorf("%d paths; at most %d per call (split the list)", len(paths), warmMaxPaths)
	}
	timeout := c.fl.Int("timeout")
	if timeout < 0 || time.Duration(timeout)*time.Second > warmMaxBound {
		return fmt.Errorf("--timeout must be 1 to %d", int(warmMaxBound/time.Second))
	}
	req := map[string]any{"paths": paths}
	for _, name := range []string{"cache", "host", "server"} {
		if v := c.fl.String(name); v != "" {
			req[name] = v
		}
	}
	if langs, err := c.fl.GetStringArray("accept-language"); err == nil && len(langs) > 0 {
		req["accept_language"] = langs
	}
	bound := warmDefaultBound
	if timeout > 0 {
		req["timeout_seconds"] = timeout
		bound = time.Duration(timeout) * time.Second
	}
	// The edge answers within the bound; leave room for the answer.
	if c.admin.client.Timeout < bound+10*time.Second {
		c.admin.client.Timeout = bound + 10*time.Second
	}
	var rep warmReport
	if printed, err := c.call(http.MethodPost, "/edge/cache/warm", req, &rep); printed || err != nil {
		return err
	}
	return renderWarm(c.out, rep)
}

// readWarmFile reads one path per line, skipping blanks and # comments.
func readWarmFile(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var paths []string
	sc := bufio.NewScanner(io.LimitReader(f, maxWarmFile))
	sc.Buffer(make([]byte, 0, 4096), warmMaxPathLen+2)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		paths = append(paths, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %v", name, err)
	}
	return paths, nil
}

func renderWarm(w io.Writer, rep warmReport) error {
	langs := false
	for _, r := range rep.Results {
		langs = langs || r.AcceptLanguage != ""
	}
	t := newTable(w)
	if langs {
		fmt.Fprintln(t, "PATH\tLANGUAGE\tRESULT\tSTATUS\tDETAIL")
	} else {
		fmt.Fprintln(t, "PATH\tRESULT\tSTATUS\tDETAIL")
	}
	for _, r := range rep.Results {
		status := "-"
		if r.Status != 0 {
			status = fmt.Sprint(r.Status)
		}
		path := r.Path
		if langs {
			path += "\t" + strings.ReplaceAll(r.AcceptLanguage, "\t", " ")
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", path, r.Result, status, strings.ReplaceAll(r.Detail, "\t", " "))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	var parts []string
	for _, k := range sortedKeys(rep.Counts) {
		parts = append(parts, fmt.Sprintf("%s %d", k, rep.Counts[k]))
	}
	what := "paths"
	if langs {
		what = "requests"
	}
	fmt.Fprintf(w, "%d %s in %s (store: %s): %s\n", len(rep.Results), what, rep.Elapsed, rep.Store, strings.Join(parts, ", "))
	if rep.Warning != "" {
		fmt.Fprintf(w, "warning: %s\n", rep.Warning)
	}
	return nil
}
