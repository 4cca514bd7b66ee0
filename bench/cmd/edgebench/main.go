// Command edgebench is the Ticketi edge's benchmark: every row of one
// scenario table measured one after the other in one run on this machine,
// reported as ratios between rows of that run, plus the Ticketi workload
// (open-loop, thousands of client addresses, two edges on one Redis) and
// the scale and memory checks. See bench/README.md.
//
//	go run ./bench/cmd/edgebench                     # everything (about 10 minutes)
//	go run ./bench/cmd/edgebench -duration 3s -rows respond,proxy,edge_l1 -workload=false
//
// It only listens on and connects to loopback, bounds every run by time and
// count, stops every process it starts (also on Ctrl-C), runs one at a time
// (flock on bench/out/.lock), records the machine and its load, and installs
// only missing tools (wrk, varnish) with apt-get, saying so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	root, out  string
	duration   time.Duration
	warmup     time.Duration
	threads    int
	conns      int
	rows       []string
	skipBuild  bool
	peers      bool
	workload   bool
	wlDuration time.Duration
	wlWarmup   time.Duration
	wlRate     int
	wlClients  int
	wlLatency  time.Duration
	scale      bool
	scaleDur   time.Duration
	scaleConc  int
	churnKeys  int
	noApt      bool
}

func (c *config) work(name string) string { return filepath.Join(c.out, "work", name) }

func main() {
	log.SetFlags(0)
	log.SetPrefix("[edgebench] ")
	cfg := &config{}
	rows := flag.String("rows", "", "comma-separated rows to run (default: all; none: only the workload and scale; -list names them)")
	list := flag.Bool("list", false, "print the scenario table and exit")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured wrk time per row")
	flag.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "unmeasured wrk warm-up per row")
	flag.IntVar(&cfg.threads, "threads", 2, "wrk threads")
	flag.IntVar(&cfg.conns, "conns", 32, "wrk connections")
	flag.BoolVar(&cfg.skipBuild, "skip-build", false, "reuse bench/out/ticketi-edge and ticketi-sim")
	flag.BoolVar(&cfg.peers, "peers", true, "build and measure the peers (bench/peers.sh, xcaddy)")
	flag.BoolVar(&cfg.workload, "workload", true, "run the Ticketi workload")
	flag.DurationVar(&cfg.wlDuration, "workload-duration", 20*time.Second, "measured time of each workload run")
	flag.DurationVar(&cfg.wlWarmup, "workload-warmup", 5*time.Second, "unmeasured warm-up of each workload run")
	flag.IntVar(&cfg.wlRate, "workload-rate", 300, "workload requests per second (open loop)")
	flag.IntVar(&cfg.wlClients, "workload-clients", 2000, "client source addresses (127.1.x.y)")
	flag.DurationVar(&cfg.wlLatency, "workload-latency", 20*time.Millisecond, "ticketi-sim database latency in the workload")
	flag.BoolVar(&cfg.scale, "scale", true, "run the 1,000-client and L1 churn checks")
	flag.DurationVar(&cfg.scaleDur, "scale-duration", 10*time.Second, "time of the 1,000-client run")
	flag.IntVar(&cfg.scaleConc, "scale-clients", 1000, "concurrent clients in the scale run")
	flag.IntVar(&cfg.churnKeys, "churn-keys", 20000, "distinct keys in the L1 churn run")
	flag.BoolVar(&cfg.noApt, "no-apt", false, "never run apt-get; rows whose tool is missing fail")
	flag.Parse()
	if *list {
		for _, s := range scenarios() {
			fmt.Printf("%-20s %s\n", s.Name, s.What)
		}
		return
	}
	if *rows == "none" {
		cfg.rows = []string{"none"} // the workload and scale only
	} else if *rows != "" {
		known := map[string]bool{}
		for _, s := range scenarios() {
			known[s.Name] = true
		}
		for _, r := range strings.Split(*rows, ",") {
			if r = strings.TrimSpace(r); r == "" {
				continue
			}
			if !known[r] {
				log.Fatalf("unknown row %q (-list names them)", r)
			}
			cfg.rows = append(cfg.rows, r)
		}
	}
	if cfg.duration < time.Second || cfg.duration > 10*time.Minute || cfg.wlDuration > 10*time.Minute || cfg.scaleDur > 10*time.Minute {
		log.Fatal("durations must be between 1s and 10m")
	}
	if cfg.wlRate < 1 || cfg.wlRate > 20000 || cfg.wlClients < 1 || cfg.wlClients > 60000 || cfg.scaleConc < 1 || cfg.scaleConc > 10000 {
		log.Fatal("rate 1..20000, clients 1..60000, scale-clients 1..10000")
	}
	root, err := moduleRoot()
	if err != nil {
		log.Fatal(err)
	}
	cfg.root, cfg.out = root, filepath.Join(root, "bench", "out")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Printf("FATAL: %v", err)
		stop()
		os.Exit(1)
	}
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/ticketi/edge") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run edgebench inside the github.com/ticketi/edge checkout")
		}
		dir = parent
	}
}

func run(ctx context.Context, cfg *config) error {
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(cfg.out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("another edgebench holds %s", lock.Name())
	}
	if err := os.RemoveAll(filepath.Join(cfg.out, "work")); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cfg.out, "work", "xdg"), 0o755); err != nil {
		return err
	}
	// Caddy's autosave and storage stay inside work/.
	os.Setenv("XDG_CONFIG_HOME", cfg.work("xdg/config"))
	os.Setenv("XDG_DATA_HOME", cfg.work("xdg/data"))

	rep := &report{Started: time.Now().UTC(), LoadStart: loadavg()}
	rep.Apt, err = ensureTools(cfg)
	if err != nil {
		return err
	}
	if err := build(ctx, cfg, rep); err != nil {
		return err
	}
	ps := &procs{}
	defer ps.stopAll()
	env, err := startBase(ctx, cfg, ps)
	if err != nil {
		return err
	}
	defer env.rdb.Close()
	rep.Versions = versions(cfg)
	rep.Rows = runRows(ctx, cfg, env, ps)
	if cfg.workload && ctx.Err() == nil {
		rep.Workload, rep.WorkloadErr = runWorkloads(ctx, cfg, env, ps)
	}
	if cfg.scale && ctx.Err() == nil {
		rep.Scale, rep.ScaleErr = runScale(ctx, cfg, env, ps)
	}
	rep.Finished = time.Now().UTC()
	rep.LoadEnd = loadavg()
	rep.fill(cfg)
	if err := rep.write(cfg); err != nil {
		return err
	}
	fmt.Print(rep.markdown())
	log.Printf("written: %s, %s (configs, logs and raw wrk output in %s)",
		filepath.Join(cfg.out, "results.md"), filepath.Join(cfg.out, "results.json"), cfg.work(""))
	return ctx.Err()
}

// ensureTools installs what is missing (wrk, varnish, redis-server) with
// apt-get and says so; nothing else is ever installed.
func ensureTools(cfg *config) (string, error) {
	var missing []string
	for bin, pkg := range map[string]string{"wrk": "wrk", "varnishd": "varnish", "redis-server": "redis-server"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", errors.New("go is not on PATH")
	}
	if len(missing) == 0 {
		return "none (wrk, varnishd and redis-server were already installed)", nil
	}
	if cfg.noApt {
		return "", fmt.Errorf("missing %v and -no-apt is set", missing)
	}
	log.Printf("installing the missing tools with apt-get: %s", strings.Join(missing, " "))
	for _, args := range [][]string{{"update"}, append([]string{"install", "-y"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("apt-get %s: %w", args[0], err)
		}
	}
	return "installed with apt-get: " + strings.Join(missing, " "), nil
}

// build makes the edge and the sim (go build), then the peers (xcaddy via
// bench/peers.sh), one after the other.
func build(ctx context.Context, cfg *config, rep *report) error {
	bins := []string{"ticketi-edge", "ticketi-sim"}
	for _, b := range bins {
		if cfg.skipBuild {
			if _, err := os.Stat(filepath.Join(cfg.out, b)); err == nil {
				continue
			}
		}
		log.Printf("go build ./cmd/%s", b)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(cfg.out, b), "./cmd/"+b)
		cmd.Dir, cmd.Stdout, cmd.Stderr = cfg.root, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/%s: %w", b, err)
		}
	}
	if cfg.peers {
		log.Printf("bash bench/peers.sh (xcaddy; minutes the first time)")
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(cfg.root, "bench", "peers.sh"))
		cmd.Dir = cfg.root
		out, err := cmd.CombinedOutput()
		_ = os.WriteFile(cfg.work("peers-build.log"), out, 0o644)
		if err != nil {
			rep.PeerBuild = "peers.sh failed: " + lastLines(string(out), 3)
			log.Print(rep.PeerBuild)
		}
	}
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return l
}

func versions(cfg *config) map[string]string {
	v := map[string]string{
		"ticketi-edge (caddy)": firstLine(filepath.Join(cfg.out, "ticketi-edge"), "version"),
		"go":                   firstLine("go", "version"),
		"wrk":                  firstLine("wrk", "-v"),
		"varnishd":             firstLine("varnishd", "-V"),
		"redis-server":         firstLine("redis-server", "--version"),
	}
	for _, p := range []string{"caddy-cache-handler", "caddy-ratelimit"} {
		if b, err := os.ReadFile(filepath.Join(cfg.out, p+".stamp")); err == nil {
			v[p] = strings.TrimSpace(string(b))
		}
	}
	return v
}
