package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// The `caddy edge` command: operator subcommands that talk to a running
// edge through the admin endpoint's /edge/ routes, registered like Caddy's
// own `caddy storage` (one command, cobra subcommands).
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "edge",
		Usage: "<stats|purge|warm|sessions|limits|entry|audit> [--address <interface>] [--json]",
		Short: "Inspects and steers a running Ticketi edge through its admin endpoint",
		Long: `
Talks to the /edge/ routes of a running edge's admin endpoint: cache and
limiter figures, purges, a user's sessions, rate-limit keys.

The admin address is --address if given, else the admin address of --config
(with --adapter), else Caddy's default (localhost:2019, or $CADDY_ADMIN).
Output is a human-readable table; --json prints the admin API's JSON instead.

  $ caddy edge stats
  $ caddy edge purge --tag events:lists
  $ caddy edge purge --pattern 'events:*'
  $ caddy edge entry event:42 --ttl 30s
  $ caddy edge warm /api/events/featured /api/events/42
  $ caddy edge sessions 42 --destroy
  $ caddy edge limits remaining --tier api --key 203.0.113.9
  $ caddy edge limits reset --tier auth --key 203.0.113.9
`,
		CobraFunc: func(cmd *cobra.Command) {
			pf := cmd.PersistentFlags()
			pf.String("address", "", "The address of the admin endpoint, if not the default")
			pf.StringP("config", "c", "", "Configuration file to read the admin address from, if --address is not used")
			pf.StringP("adapter", "a", "", "Name of config adapter to apply (with --config)")
			pf.Bool("json", false, "Print the admin API's JSON instead of a table")
			for _, sub := range edgeSubcommands() {
				cmd.AddCommand(sub)
			}
		},
	})
}

// edgeSubcommands are the children of `caddy edge`.
func edgeSubcommands() []*cobra.Command {
	stats := &cobra.Command{
		Use:   "stats",
		Short: "Shows the store, breaker, pool, per-rule cache, limiter and session figures",
		Args:  cobra.NoArgs,
		RunE:  edgeRun(cmdEdgeStats),
	}

	purge := &cobra.Command{
		Use:   "purge --key <key> | --tag <tag> | --pattern <glob> [--soft] [--cache <name>]",
		Short: "Drops cache entries by key, tag or glob pattern, on every edge",
		Long: `
Drops cache entries from L2 (Redis) and from the L1 copies of every edge
(through pub/sub). Give exactly one of --key, --tag or --pattern. --cache
limits the purge to one edge_cache handler (by name, as /edge/stats lists
them). --soft marks the entries stale instead of dropping them: every edge
serves them stale (Cache-Status detail=soft-purge) while one refresh per key
runs, for at most the rule's stale_while_revalidate window (30s for a rule
without one). While Redis is unreachable a soft purge is done hard (said so).
`,
		Args: cobra.NoArgs,
		RunE: edgeRun(cmdEdgePurge),
	}
	purge.Flags().String("key", "", "Cache key, e.g. event:42")
	purge.Flags().String("tag", "", "Tag, e.g. events:lists")
	purge.Flags().String("pattern", "", "Glob over cache keys, e.g. 'events:*'")
	purge.Flags().Bool("soft", false, "Mark stale instead of dropping")
	purge.Flags().String("cache", "", "Only this edge_cache handler")

	sessions := &cobra.Command{
		Use:   "sessions <userId> [--destroy [--handle <handle>]]",
		Short: "Lists a user's sessions, or ends them (all, or the one with --handle)",
		Args:  cobra.ExactArgs(1),
		RunE:  edgeRun(cmdEdgeSessions),
	}
	sessions.Flags().Bool("destroy", false, "End the sessions (logout everywhere)")
	sessions.Flags().String("handle", "", "With --destroy: end only the session with this handle")

	limits := &cobra.Command{
		Use:   "limits <reset|remaining|stats> [--tier <name> --key <key>]",
		Short: "Resets a rate-limit key, shows what it has left, or shows per-tier counts and top offenders",
		Long: `
  reset --tier T --key K       forget K's state in tier T (it starts afresh)
  remaining --tier T --key K   what K has left in tier T, without using any
  stats [--top N]              per-tier allowed/denied and the top offenders
                               (keys shown hashed)

The key is what the tier is keyed by: the client IP (an IPv6 address stands
for its /64 unless the tier says otherwise) or the user id.
`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"reset", "remaining", "stats"},
		RunE:      edgeRun(cmdEdgeLimits),
	}
	limits.Flags().String("tier", "", "Tier name, e.g. api")
	limits.Flags().String("key", "", "The key the tier counts by (client IP or user id)")
	limits.Flags().Int("top", 20, "With stats: how many offenders to show")

	audit := &cobra.Command{
		Use:   "audit [--limit N]",
		Short: "Shows the audit trail: admin actions and abuse signals, newest first",
		Long: `
Every admin action (purge, session destroy, limit reset, reconnect) and every
abuse signal (a key that starts being rate limited) is kept in a capped Redis
Stream shared by the fleet, or in this edge's memory on the embedded default
and while Redis is unreachable. User ids and keys appear hashed.
`,
		Args: cobra.NoArgs,
		RunE: edgeRun(cmdEdgeAudit),
	}
	audit.Flags().Int("limit", 50, "How many entries to show (1 to 1000)")

	return []*cobra.Command{stats, purge, sessions, limits, audit, edgeUICommand(), edgeEntryCommand(), edgeWarmCommand()}
}

// edgeRun adapts a subcommand to cobra the way Caddy's commands are
// (caddycmd.WrapCommandFuncForCobra: errors logged through Caddy's logger,
// exit status kept).
func edgeRun(f func(*edgeCLI, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			cli, err := newEdgeCLI(fl, cmd.OutOrStdout())
			if err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			if err := f(cli, args); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			return caddy.ExitCodeSuccess, nil
		})(cmd, args)
	}
}

// edgeCLI is one invocation: where the admin endpoint is, how to print.
type edgeCLI struct {
	fl    caddycmd.Flags
	out   io.Writer
	admin *adminClient
	json  bool
}

func newEdgeCLI(fl caddycmd.Flags, out io.Writer) (*edgeCLI, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("couldn't determine the admin endpoint's address: %v", err)
	}
	client, err := newAdminClient(addr)
	if err != nil {
		return nil, err
	}
	return &edgeCLI{fl: fl, out: out, admin: client, json: fl.Bool("json")}, nil
}

// call performs one admin request and decodes the answer into v (when not
// nil). With --json the raw answer is printed and printed reports true, so
// the caller skips its table.
func (c *edgeCLI) call(method, path string, body any, v any) (printed bool, err error) {
	raw, err := c.admin.do(method, path, body)
	if err != nil {
		return false, err
	}
	if c.json {
		var buf bytes.Buffer
		if json.Indent(&buf, raw, "", "  ") != nil {
			buf.Reset()
			buf.Write(raw)
		}
		buf.WriteByte('\n')
		_, err := c.out.Write(buf.Bytes())
		return true, err
	}
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			return false, fmt.Errorf("%s %s: unexpected answer from the admin endpoint: %v", method, path, err)
		}
	}
	return false, nil
}

// adminTimeout bounds one admin request: a purge by pattern scans in
// batches and may take a while on a large keyspace, but never forever.
const adminTimeout = 30 * time.Second

// maxAdminAnswer bounds what the CLI reads from the admin endpoint.
const maxAdminAnswer = 16 << 20

// adminClient talks to Caddy's admin endpoint over TCP or a unix socket,
// as caddycmd.AdminAPIRequest does, but tells "cannot reach it" apart from
// "it said no" so each gets its own clear message.
type adminClient struct {
	addr   string // as given, for messages
	origin string
	client *http.Client
}

func newAdminClient(addr string) (*adminClient, error) {
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %q: want host:port or unix/path (%v)", addr, err)
	}
	network, dialAddr := na.Network, na.JoinHostPort(0)
	origin := "http://" + dialAddr
	if na.IsUnixNetwork() {
		// A unix address may carry socket permission bits ("unix//s.sock|0222").
		path, _, _ := strings.Cut(na.Host, "|")
		dialAddr, origin = path, "http://127.0.0.1"
	} else if na.IsFdNetwork() {
		return nil, fmt.Errorf("admin address %q: a file descriptor cannot be dialled; give the endpoint's host:port or unix socket", addr)
	}
	if _, err := url.Parse(origin + "/"); err != nil {
		return nil, fmt.Errorf("invalid admin address %q: %v", addr, unwrapURLError(err))
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &adminClient{
		addr:   addr,
		origin: origin,
		client: &http.Client{
			Timeout: adminTimeout,
			Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, dialAddr)
			}},
		},
	}, nil
}

// adminUnreachableError is a request that never got an answer.
type adminUnreachableError struct {
	addr string
	err  error
}

func (e adminUnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the edge's admin endpoint at %s: %v (is the edge running, and is this its admin address? give it with --address)", e.addr, e.err)
}

func (e adminUnreachableError) Unwrap() error { return e.err }

func (a *adminClient) do(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.origin+path, rd)
	if err != nil {
		return nil, fmt.Errorf("making request: %v", err)
	}
	// The admin endpoint checks Origin against its own address.
	req.Header.Set("Origin", a.origin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, adminUnreachableError{addr: a.addr, err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %v", method, path, err)
	}
	if resp.StatusCode >= 400 {
		var apiErr struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &apiErr) == nil && apiErr.Error != "" {
			msg = apiErr.Error
		}
		if resp.StatusCode == http.StatusNotFound && strings.HasPrefix(msg, "resource not found") {
			msg += " (the edge's admin routes are missing: is this Caddy built with the Ticketi edge modules?)"
		}
		return nil, fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, http.StatusText(resp.StatusCode), msg)
	}
	return raw, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func cmdEdgeStats(c *edgeCLI, _ []string) error {
	var st edgeStatsView
	if printed, err := c.call(http.MethodGet, "/edge/stats", nil, &st); printed || err != nil {
		return err
	}
	return renderStats(c.out, st)
}

func cmdEdgePurge(c *edgeCLI, _ []string) error {
	req := map[string]any{}
	given := 0
	for _, name := range []string{"key", "tag", "pattern"} {
		if v := c.fl.String(name); v != "" {
			req[name] = v
			given++
		}
	}
	if given != 1 {
		return errors.New("give exactly one of --key, --tag or --pattern")
	}
	if v := c.fl.String("cache"); v != "" {
		req["cache"] = v
	}
	if c.fl.Bool("soft") {
		req["soft"] = true
	}
	var res struct {
		Purged int  `json:"purged"`
		Soft   bool `json:"soft"`
	}
	if printed, err := c.call(http.MethodPost, "/edge/cache/purge", req, &res); printed || err != nil {
		return err
	}
	var err error
	switch {
	case res.Soft:
		_, err = fmt.Fprintf(c.out, "soft-purged %d entries (served stale while one refresh per key runs)\n", res.Purged)
	case c.fl.Bool("soft"):
		_, err = fmt.Fprintf(c.out, "purged %d entries (hard: redis is unreachable)\n", res.Purged)
	default:
		_, err = fmt.Fprintf(c.out, "purged %d entries\n", res.Purged)
	}
	return err
}

func cmdEdgeSessions(c *edgeCLI, args []string) error {
	path := "/edge/sessions/" + url.PathEscape(args[0])
	handle := c.fl.String("handle")
	if !c.fl.Bool("destroy") {
		if handle != "" {
			return errors.New("--handle goes with --destroy (the list shows every handle)")
		}
		var res struct {
			Sessions []sessionView `json:"sessions"`
		}
		if printed, err := c.call(http.MethodGet, path, nil, &res); printed || err != nil {
			return err
		}
		return renderSessions(c.out, res.Sessions)
	}
	if handle != "" {
		path += "/" + url.PathEscape(handle)
	}
	var res struct {
		Destroyed int `json:"destroyed"`
	}
	if printed, err := c.call(http.MethodDelete, path, nil, &res); printed || err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.out, "destroyed %d sessions\n", res.Destroyed)
	return err
}

func cmdEdgeLimits(c *edgeCLI, args []string) error {
	tier, key := c.fl.String("tier"), c.fl.String("key")
	needTierKey := func() error {
		if tier == "" || key == "" {
			return fmt.Errorf("limits %s needs --tier and --key", args[0])
		}
		return nil
	}
	switch args[0] {
	case "reset":
		if err := needTierKey(); err != nil {
			return err
		}
		if printed, err := c.call(http.MethodPost, "/edge/ratelimit/reset", map[string]string{"tier": tier, "key": key}, nil); printed || err != nil {
			return err
		}
		_, err := fmt.Fprintf(c.out, "tier %s: the key starts afresh\n", tier)
		return err
	case "remaining":
		if err := needTierKey(); err != nil {
			return err
		}
		q := url.Values{"tier": {tier}, "key": {key}}
		var res struct {
			Tier         string  `json:"tier"`
			Limit        int64   `json:"limit"`
			Remaining    int64   `json:"remaining"`
			ResetSeconds float64 `json:"reset_seconds"`
		}
		if printed, err := c.call(http.MethodGet, "/edge/ratelimit/remaining?"+q.Encode(), nil, &res); printed || err != nil {
			return err
		}
		_, err := fmt.Fprintf(c.out, "tier %s: %d of %d left, full again in %.1fs\n", res.Tier, res.Remaining, res.Limit, res.ResetSeconds)
		return err
	case "stats":
		top := c.fl.Int("top")
		if top < 1 || top > 1000 {
			return errors.New("--top must be 1 to 1000")
		}
		var res map[string]limiterStatsView
		if printed, err := c.call(http.MethodGet, fmt.Sprintf("/edge/ratelimit/stats?top=%d", top), nil, &res); printed || err != nil {
			return err
		}
		return renderLimits(c.out, res)
	}
	return fmt.Errorf("unknown limits action %q; want reset, remaining or stats", args[0])
}

func cmdEdgeAudit(c *edgeCLI, _ []string) error {
	limit := c.fl.Int("limit")
	if limit < 1 || limit > auditReadMax {
		return fmt.Errorf("--limit must be 1 to %d", auditReadMax)
	}
	var res struct {
		Source string       `json:"source"`
		Events []auditEvent `json:"events"`
	}
	if printed, err := c.call(http.MethodGet, fmt.Sprintf("/edge/audit?limit=%d", limit), nil, &res); printed || err != nil {
		return err
	}
	return renderAudit(c.out, res.Source, res.Events)
}
