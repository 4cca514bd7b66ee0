package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// A tiny Chrome DevTools Protocol client: enough to drive one page of a
// real headless Chromium (Debian's `chromium`) from a test, collect its
// console errors and evaluate JavaScript in it. One browser per test.

// browser is a running headless Chromium with one page attached.
type browser struct {
	proc *process
	ws   *websocket.Conn

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	errs    []string // console errors, exceptions, failed loads
	closed  chan struct{}
}

type cdpMessage struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

var devtoolsListening = regexp.MustCompile(`DevTools listening on (ws://[^\s]+)`)

// chromiumPath finds Debian's chromium (or another Chromium-based browser
// named by CHROMIUM). Without one the test skips, except in CI, which
// installs it (.ci/run).
func chromiumPath(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium on PATH in CI (.ci/run installs Debian's chromium)")
	}
	t.Skip("no chromium on PATH (apt-get install chromium)")
	return ""
}

// startBrowser launches headless Chromium with a private profile, attaches
// to its first page and stops it on t's cleanup.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin := chromiumPath(t)
	dir := t.TempDir()
	args := []string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + dir, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--remote-allow-origins=*", "about:blank",
	}
	p, err := startProcess("chromium", bin, args, baseEnv(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{proc: p, pending: map[int]chan cdpMessage{}, closed: make(chan struct{})}
	t.Cleanup(func() {
		if b.ws != nil {
			b.ws.Close()
		}
		p.stop()
		logOnFailure(t, p)
	})
	var browserWS string
	err = poll(readyTimeout, func() error {
		if m := devtoolsListening.FindStringSubmatch(p.out.String()); m != nil {
			browserWS = m[1]
			return nil
		}
		if p.exited() {
			return stopPolling{p.exitError()}
		}
		return errors.New("chromium has not opened its DevTools port yet")
	})
	if err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// The page target's socket: http://host:port/json/list.
	hostPort := strings.TrimPrefix(browserWS, "ws://")
	hostPort = hostPort[:strings.Index(hostPort, "/")]
	var pageWS string
	err = poll(readyTimeout, func() error {
		resp, err := http.Get("http://" + hostPort + "/json/list")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var targets []struct {
			Type string `json:"type"`
			WS   string `json:"webSocketDebuggerUrl"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
			return err
		}
		for _, tg := range targets {
			if tg.Type == "page" && tg.WS != "" {
				pageWS = tg.WS
				return nil
			}
		}
		return errors.New("no page target yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.Dial(pageWS, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatalf("attaching to the page: %v", err)
	}
	ws.MaxPayloadBytes = 64 << 20
	b.ws = ws
	go b.readLoop()
	for _, domain := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		b.call(t, domain, nil)
	}
	return b
}

func (b *browser) readLoop() {
	defer close(b.closed)
	for {
		var msg cdpMessage
		if err := websocket.JSON.Receive(b.ws, &msg); err != nil {
			if !errors.Is(err, io.EOF) {
				b.mu.Lock()
				b.errs = append(b.errs, "devtools connection: "+err.Error())
				b.mu.Unlock()
			}
			return
		}
		if msg.ID != 0 {
			b.mu.Lock()
			ch := b.pending[msg.ID]
			delete(b.pending, msg.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- msg
			}
			continue
		}
		if e := pageError(msg); e != "" {
			b.mu.Lock()
			b.errs = append(b.errs, e)
			b.mu.Unlock()
		}
	}
}

// pageError describes an event that means the page went wrong: a console
// error, an uncaught exception, a resource that failed to load.
func pageError(msg cdpMessage) string {
	switch msg.Method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		if json.Unmarshal(msg.Params, &p) == nil && (p.Type == "error" || p.Type == "assert") {
			var parts []string
			for _, a := range p.Args {
				parts = append(parts, fmt.Sprint(a.Value, a.Description))
			}
			return "console." + p.Type + ": " + strings.Join(parts, " ")
		}
	case "Runtime.exceptionThrown":
		var p struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		_ = json.Unmarshal(msg.Params, &p)
		return "exception: " + p.Details.Text + " " + p.Details.Exception.Description
	case "Log.entryAdded":
		var p struct {
			Entry struct {
				Level  string `json:"level"`
				Source string `json:"source"`
				Text   string `json:"text"`
				URL    string `json:"url"`
			} `json:"entry"`
		}
		if json.Unmarshal(msg.Params, &p) == nil && p.Entry.Level == "error" {
			return "log (" + p.Entry.Source + "): " + p.Entry.Text + " " + p.Entry.URL
		}
	}
	return ""
}

// call sends one CDP command and waits (bounded) for its result.
func (b *browser) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	res, err := b.tryCall(method, params)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	return res
}

func (b *browser) tryCall(method string, params any) (json.RawMessage, error) {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	req := map[string]any{"id": id, "method": method}
	if params != nil {
		req["params"] = params
	}
	if err := websocket.JSON.Send(b.ws, req); err != nil {
		return nil, err
	}
	select {
	case msg := <-ch:
		if msg.Error != nil {
			return nil, fmt.Errorf("%d %s", msg.Error.Code, msg.Error.Message)
		}
		return msg.Result, nil
	case <-b.closed:
		return nil, errors.New("devtools connection closed")
	case <-time.After(requestTimeout):
		return nil, errors.New("no answer from chromium")
	}
}

// navigate loads url in the page and waits until its load event.
func (b *browser) navigate(t *testing.T, url string) {
	t.Helper()
	var res struct {
		ErrorText string `json:"errorText"`
	}
	if err := json.Unmarshal(b.call(t, "Page.navigate", map[string]any{"url": url}), &res); err != nil || res.ErrorText != "" {
		t.Fatalf("navigate %s: %v %s", url, err, res.ErrorText)
	}
	Eventually(t, readyTimeout, func() error {
		if s := b.evalString(t, "document.readyState"); s != "complete" {
			return fmt.Errorf("document.readyState = %q", s)
		}
		return nil
	})
}

// eval evaluates expr in the page (awaiting a promise) and decodes its
// value into v.
func (b *browser) eval(t *testing.T, expr string, v any) {
	t.Helper()
	raw := b.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.Exception != nil {
		t.Fatalf("evaluating %q: %s", expr, res.Exception.Text)
	}
	if v != nil && len(res.Result.Value) > 0 {
		if err := json.Unmarshal(res.Result.Value, v); err != nil {
			t.Fatalf("evaluating %q: %v (%s)", expr, err, res.Result.Value)
		}
	}
}

func (b *browser) evalString(t *testing.T, expr string) string {
	t.Helper()
	var s string
	b.eval(t, expr, &s)
	return s
}

// text is the text content of the element with id.
func (b *browser) text(t *testing.T, id string) string {
	t.Helper()
	return b.evalString(t, fmt.Sprintf("(document.getElementById(%q) || {textContent: '<no #%s>'}).textContent", id, id))
}

// pageErrors returns the console errors, exceptions and failed loads seen
// so far.
func (b *browser) pageErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}
