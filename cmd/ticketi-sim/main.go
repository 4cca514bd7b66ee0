// Command ticketi-sim serves the simulated Ticketi API (internal/ticketisim)
// for demos, end-to-end tests and benchmarks of the edge.
//
//	ticketi-sim [-addr :6001] [-latency 20ms] [-instant]
//
// TICKETI_SIM_ADDR sets the default address, so scripts can move it without
// rewriting command lines. The first log line names the bound address, which
// tests starting it with -addr 127.0.0.1:0 read to find the port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ticketi/edge/internal/ticketisim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := log.New(os.Stderr, "", log.LstdFlags)
	if err := run(ctx, os.Args[1:], os.Getenv, logger, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		logger.Print(err)
		os.Exit(1)
	}
}

// run serves until ctx is done, then drains in-flight requests. ready, when
// set, receives the bound address once the listener is up.
func run(ctx context.Context, args []string, getenv func(string) string, logger *log.Logger, ready func(addr string)) error {
	fs := flag.NewFlagSet("ticketi-sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	defaultAddr := ":6001"
	if v := getenv("TICKETI_SIM_ADDR"); v != "" {
		defaultAddr = v
	}
	addr := fs.String("addr", defaultAddr, "listen address (env TICKETI_SIM_ADDR)")
	latency := fs.Duration("latency", ticketisim.DefaultLatency, "simulated database latency per /api request")
	instant := fs.Bool("instant", false, "answer without simulated latency")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(logger.Writer())
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *latency < 0 {
		return fmt.Errorf("-latency must not be negative")
	}

	sim := ticketisim.New(ticketisim.Options{
		Latency: *latency,
		// -latency 0 means what it says, not "use the default".
		Instant: *instant || *latency == 0,
		Logf:    logger.Printf,
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           sim,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          logger,
	}
	logger.Printf("ticketi-sim listening on %s (latency %s)", ln.Addr(), sim.Latency())
	if ready != nil {
		ready(ln.Addr().String())
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		// Requests parked behind a long configured latency; cut them off.
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Print("ticketi-sim stopped")
	return nil
}
