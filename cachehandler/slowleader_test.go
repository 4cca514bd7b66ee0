package cachehandler

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// smallBuffers makes every accepted connection's send buffer small, so a
// client that does not read blocks the server's writes after a few KB
// instead of after whatever the kernel would buffer. grow lifts that once
// the test has seen what it wanted, so the rest is read quickly.
type smallBuffers struct {
	net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func (l *smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
		l.mu.Lock()
		l.conns = append(l.conns, tc)
		l.mu.Unlock()
	}
	return c, err
}

func (l *smallBuffers) grow() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.SetWriteBuffer(1 << 20)
	}
}

// bigBody is a shareable answer well under MaxEntryBytes but far larger
// than any buffer between the edge and a client that does not read.
var bigBody = `{"pad":"` + strings.Repeat("x", 256<<10) + `"}`

// A leader whose client does not read must not hold the followers of its
// fill: the upstream body is read into the entry at upstream speed, the
// followers are answered when it is complete, and the leader still gets
// its whole answer once it reads.
func TestSlowLeaderDoesNotHoldFollowers(t *testing.T) {
	for _, proto := range []string{"http2 zero window", "http1 not reading"} {
		t.Run(proto, func(t *testing.T) {
			g := newRig(t, nil)
			checkSlowLeader(t, g.cache, proto, "/api/events/1", func(*url.URL) string { return "event:1" })
		})
	}
}

// The standards mode gives the same guarantee for a URL no rule matches.
func TestRFC9111SlowLeaderDoesNotHoldFollowers(t *testing.T) {
	for _, proto := range []string{"http2 zero window", "http1 not reading"} {
		t.Run(proto, func(t *testing.T) {
			g := newRig(t, func(c *Config) { c.Standard = &Standard{} })
			checkSlowLeader(t, g.cache, proto, "/static/big.json", func(u *url.URL) string {
				return stdKeyFor(u.Scheme, u.Host, "/static/big.json", "")
			})
		})
	}
}

// checkSlowLeader sends path through cache from a leader whose client does
// not read (proto says how), then from followers that join its flight
// (flightKey: the flight's key for the server's URL), and fails unless the
// followers get the whole stored answer while the leader still is not
// reading, the upstream is asked once, and the leader gets its whole
// answer once it reads.
func checkSlowLeader(t *testing.T, cache *Cache, proto, path string, flightKey func(*url.URL) string) {
	t.Helper()
	release := make(chan struct{})
	var upstream atomic.Int32
	next := NextFunc(func(w http.ResponseWriter, r *http.Request) error {
		upstream.Add(1)
		<-release
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=60")
		_, err := io.WriteString(w, bigBody)
		return err
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = cache.Handle(w, r, next)
	}))
	small := &smallBuffers{Listener: srv.Listener}
	srv.Listener = small
	var followerClient *http.Client
	var leaderBody func() (string, error)
	var abortLeader func() // on failure, so the blocked handler can end and srv.Close return
	if proto == "http2 zero window" {
		srv.EnableHTTP2 = true
		srv.StartTLS()
		followerClient = srv.Client()
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.ForceAttemptHTTP2 = true
		// A window of one byte, never replenished while the body is
		// not read: the server cannot send the answer.
		tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 1}
		leader := &http.Client{Transport: tr}
		ctx, cancel := context.WithCancel(context.Background())
		abortLeader = cancel
		done := make(chan *http.Response, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
			resp, err := leader.Do(req)
			if err != nil {
				t.Error(err)
				close(done)
				return
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("leader spoke %s", resp.Proto)
			}
			done <- resp
		}()
		leaderBody = func() (string, error) {
			resp, ok := <-done
			if !ok {
				return "", io.ErrUnexpectedEOF
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return string(b), err
		}
	} else {
		srv.Start()
		followerClient = srv.Client()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		abortLeader = func() { conn.Close() }
		_ = conn.(*net.TCPConn).SetReadBuffer(4096)
		// The followers' Host, so a URL-keyed flight is theirs too.
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: "+srv.Listener.Addr().String()+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		leaderBody = func() (string, error) {
			defer conn.Close()
			_ = conn.(*net.TCPConn).SetReadBuffer(1 << 20)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return string(b), err
		}
	}
	defer srv.Close()
	failed := true
	defer func() {
		if failed {
			abortLeader()
		}
	}()
	base, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	key := flightKey(base)

	waitFollowers(t, cache, key, 0) // the leader's fill is in flight
	const n = 5
	results := make(chan string, n)
	for range n {
		go func() {
			resp, err := followerClient.Get(srv.URL + path)
			if err != nil {
				results <- err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			results <- resp.Header.Get("Cache-Status") + " " + map[bool]string{true: "full body", false: "short body"}[string(b) == bigBody]
		}()
	}
	waitFollowers(t, cache, key, n)
	close(release)
	deadline := time.After(10 * time.Second)
	for range n {
		select {
		case r := <-results:
			if r != "ticketi-edge; fwd=uri-miss; collapsed full body" {
				t.Fatalf("follower: %s", r)
			}
		case <-deadline:
			t.Fatal("followers are still held by a leader whose client does not read")
		}
	}
	if upstream.Load() != 1 {
		t.Fatalf("upstream asked %d times, want once", upstream.Load())
	}
	small.grow()
	body, err := leaderBody()
	if err != nil || body != bigBody {
		t.Fatalf("the slow leader's own answer: %d bytes, %v", len(body), err)
	}
	failed = false
}

// Answers over MaxEntryBytes stream through: the leader's client gets
// its first bytes before the upstream has finished, and the followers are
// released at once to ask for themselves. In a rule's fill and in the
// standards mode alike.
func TestTooLargeAnswerStreamsAndReleasesFollowers(t *testing.T) {
	for _, mode := range []struct{ name, path, cacheControl, detail string }{
		{"rule", "/api/events/2", "public, max-age=60", "too-large"},
		{"rfc9111", "/static/big.json", "public, max-age=60", "too-large"},
		{"rfc9111 no-store", "/static/big.json", "no-store", "cache-control"}, // not storable from its header on
	} {
		t.Run(mode.name, func(t *testing.T) {
			g := newRig(t, func(c *Config) {
				c.MaxEntryBytes = 64 << 10
				if strings.HasPrefix(mode.name, "rfc9111") {
					c.Standard = &Standard{}
				}
			})
			checkTooLargeStreams(t, g, mode.path, mode.cacheControl, mode.detail)
		})
	}
}

// checkTooLargeStreams: the first client's answer (with this Cache-Control)
// streams with this Cache-Status detail, and a second client is answered
// while the first one's upstream is still sending.
func checkTooLargeStreams(t *testing.T, g *rig, path, cacheControl, detail string) {
	firstPart, finish := make(chan struct{}), make(chan struct{})
	var upstream atomic.Int32
	g.next = func(w http.ResponseWriter, r *http.Request) error {
		if upstream.Add(1) > 1 {
			_, err := io.WriteString(w, bigBody) // the followers' own requests
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", cacheControl)
		_, _ = io.WriteString(w, bigBody[:128<<10])
		http.NewResponseController(w).Flush()
		close(firstPart)
		<-finish
		_, err := io.WriteString(w, bigBody[128<<10:])
		return err
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = g.cache.Handle(w, r, g.next)
	}))
	defer srv.Close()
	var once sync.Once
	finishUpstream := func() { once.Do(func() { close(finish) }) }
	defer finishUpstream()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-firstPart
	if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "detail="+detail) {
		t.Fatalf("Cache-Status %q", cs)
	}
	head := make([]byte, 100<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("the first part did not stream: %v", err)
	}
	// While the leader's upstream is still sending, another client is not
	// held (the timeout only turns a hang into a failure).
	fresp, err := (&http.Client{Timeout: 30 * time.Second}).Get(srv.URL + path)
	if err != nil {
		t.Fatalf("second client held by the streaming leader: %v", err)
	}
	fb, _ := io.ReadAll(fresp.Body)
	fresp.Body.Close()
	if string(fb) != bigBody {
		t.Fatalf("second client got %d bytes", len(fb))
	}
	finishUpstream()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(append(head, rest...), []byte(bigBody)) {
		t.Fatalf("leader's streamed answer: %d bytes, %v", len(head)+len(rest), err)
	}
}
