package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// syncBuffer lets the test read the log while the server goroutine writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunServesAndStops(t *testing.T) {
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	// The env address is overridden by the flag.
	env := func(k string) string {
		if k == "TICKETI_SIM_ADDR" {
			return "127.0.0.1:1"
		}
		return ""
	}
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-instant"}, env, log.New(&logs, "", 0),
			func(a string) { addrs <- a })
	}()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	}
	resp, err := http.Get("http://" + addr + "/api/events/1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":1`) {
		t.Fatalf("GET /api/events/1: %d %s", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(logs.String(), "ticketi-sim listening on "+addr+" (latency 0s)") {
		t.Fatalf("start line missing from log: %q", logs.String())
	}
}

func TestRunFlagsAndEnv(t *testing.T) {
	var logs syncBuffer
	lg := log.New(&logs, "", 0)
	noEnv := func(string) string { return "" }
	for _, args := range [][]string{{"-latency", "-1s"}, {"-bogus"}, {"extra"}, {"-addr", "not an address"}} {
		if err := run(context.Background(), args, noEnv, lg, nil); err == nil {
			t.Errorf("run %v: want an error", args)
		}
	}
	// With no -addr the environment decides; a bad one proves it was used.
	env := func(string) string { return "127.0.0.1:envport" }
	if err := run(context.Background(), nil, env, lg, nil); err == nil || !strings.Contains(err.Error(), "envport") {
		t.Fatalf("TICKETI_SIM_ADDR ignored: %v", err)
	}
}
