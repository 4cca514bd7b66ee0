package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// `caddy edge ui` exists because a browser cannot open Caddy's admin
// endpoint by typing its address: Caddy refuses browser requests that carry
// Sec-Fetch-* headers but neither Origin nor Referer (its cross-site
// mitigation), and a typed address is exactly such a request. The command
// listens on a loopback port, checks that requests come from its own page
// (Host, Origin, Sec-Fetch-Site), and forwards only /edge/ paths to the
// admin endpoint with the admin endpoint's own Origin, as the caddy CLI's
// requests do. Nothing but /edge/ is reachable through it (no /load, no
// /config/).
func edgeUICommand() *cobra.Command {
	ui := &cobra.Command{
		Use:   "ui [--listen 127.0.0.1:2020]",
		Short: "Serves the live dashboard on a local port, for a browser",
		Long: `
Serves the edge's live dashboard (GET /edge/ui/ on the admin endpoint) on a
loopback port that a browser can open, forwarding only the /edge/ routes to
the admin endpoint. Open the address it prints; stop it with Ctrl-C.

A browser cannot open the admin endpoint directly: Caddy refuses browser
requests that carry neither Origin nor Referer, as a typed address does.
`,
		Args: cobra.NoArgs,
		RunE: edgeRun(cmdEdgeUI),
	}
	ui.Flags().String("listen", "127.0.0.1:2020", "Loopback address to serve the dashboard on")
	return ui
}

func cmdEdgeUI(c *edgeCLI, _ []string) error {
	listen := c.fl.String("listen")
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %v", listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %q: the dashboard acts with the admin endpoint's authority, so it only listens on a loopback address (127.0.0.1, ::1, localhost)", listen)
	}
	// Fail now, clearly, rather than on the first page load.
	if _, err := c.admin.do(http.MethodGet, uiBase+"data", nil); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	proxy, err := newUIProxy(c.admin, ln.Addr().(*net.TCPAddr))
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(c.out, "Ticketi Edge dashboard: http://%s%s (admin endpoint %s); Ctrl-C stops it\n", ln.Addr(), uiBase, c.admin.addr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// uiProxy forwards the dashboard's requests to the admin endpoint.
type uiProxy struct {
	hosts  map[string]bool // Host values this listener answers to
	origin map[string]bool // Origin values of its own page
	next   *httputil.ReverseProxy
}

func newUIProxy(admin *adminClient, addr *net.TCPAddr) (*uiProxy, error) {
	target, err := url.Parse(admin.origin)
	if err != nil {
		return nil, err
	}
	port := fmt.Sprint(addr.Port)
	p := &uiProxy{hosts: map[string]bool{}, origin: map[string]bool{}}
	for _, h := range []string{addr.IP.String(), "localhost"} {
		hp := net.JoinHostPort(h, port)
		p.hosts[hp] = true
		p.origin["http://"+hp] = true
	}
	p.next = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = target.Scheme, target.Host
			pr.Out.Host = target.Host
			// The admin endpoint checks Origin (or Referer) against its own
			// address; this listener has already checked the browser's.
			pr.Out.Header.Set("Origin", admin.origin)
			pr.Out.Header.Del("Referer")
			pr.Out.Header.Del("Cookie")
		},
		Transport: admin.client.Transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": adminUnreachableError{addr: admin.addr, err: err}.Error()})
		},
	}
	return p, nil
}

func (p *uiProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	refuse := func(code int, msg string) {
		writeJSON(w, code, map[string]string{"error": msg})
	}
	// DNS rebinding: only requests addressed to this listener.
	if !p.hosts[strings.ToLower(r.Host)] {
		refuse(http.StatusForbidden, "host not allowed: "+r.Host)
		return
	}
	// Cross-site requests: another page may not drive the admin API
	// through this listener.
	if o := r.Header.Get("Origin"); o != "" && !p.origin[strings.ToLower(o)] {
		refuse(http.StatusForbidden, "origin not allowed: "+o)
		return
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		refuse(http.StatusForbidden, "cross-site request refused")
		return
	}
	if r.URL.Path == "/" || r.URL.Path == strings.TrimSuffix(uiBase, "/") {
		http.Redirect(w, r, uiBase, http.StatusFound)
		return
	}
	if !strings.HasPrefix(r.URL.Path, adminBase) || strings.Contains(r.URL.Path, "..") {
		refuse(http.StatusNotFound, "only the edge's routes ("+adminBase+"...) are served here")
		return
	}
	p.next.ServeHTTP(w, r)
}
