// Command ipambench measures the plugin end to end against a baseline measured in the same run
// (issue 5, docs/PERFORMANCE.md).
//
// Ours: one or more talkingdata-ipam daemons, spoken to over their sockets exactly as dockerd
// does (Activate, GetDefaultAddressSpaces, RequestPool, then RequestAddress with a MAC and
// ReleaseAddress). Baseline: bare etcd transactions doing the same durable compare-and-swap per
// address at the same concurrency, with no plugin, in a key space of their own. Both run against
// the same etcd, interleaved round by round so that the drift of a shared machine hits both.
//
// It starts everything itself (etcd on loopback, the daemons) and removes it on exit:
//
//	go run ./tools/ipambench -out docs/perf                   # the full sweep, single-member etcd
//	go run ./tools/ipambench -out docs/perf -etcd-cluster 3   # the same on a 3-member cluster
//	go run ./tools/ipambench -quick                           # a smoke run of every phase
//	go run ./tools/ipambench -phases fifty -latency 2ms   # fifty hosts on a LAN (fifty.go)
//	go run ./tools/ipambench -compare docs/perf -out DIR      # does a run in DIR reproduce docs/perf?
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipambench:", err)
		os.Exit(2)
	}
	if cfg.Compare != "" {
		if err := compareDirs(cfg.Compare, cfg.Out, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "ipambench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once; the children die with us (Pdeathsig)
	}()
	res, err := run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipambench:", err)
		os.Exit(1)
	}
	if res.Errors > 0 || res.Duplicates > 0 {
		os.Exit(1) // a benchmark that lost correctness is not a result
	}
}

// config is a run's settings; parseFlags fills it.
type config struct {
	PluginBin, IpamctlBin, EtcdBin string
	EtcdCluster                    int      // members to start; 0 with EtcdEndpoints
	EtcdEndpoints                  []string // use this etcd instead of starting one
	Instances                      int      // plugin daemons; the throughput sweep runs 1 and all
	Out, Name                      string   // files go to Out/Name-*.csv|svg|txt
	Phases                         map[string]bool

	Concurrency []int
	Pool        string   // the throughput pool, also filled completely for daemon RSS and the exhausted pool
	Sizes       []string // pools of the latency sweep, smallest first
	Utils       []int    // utilisation of the latency sweep, %, ascending

	Rounds     int           // baseline/ours alternations per point; medians are reported
	RoundTime  time.Duration // one round of the throughput sweep
	SerialTime time.Duration // one round of the serial latency sweep and the exhausted pool
	InitRounds int           // init-range timings of pools up to a /16 (larger: one)
	FillConc   int           // goroutines filling a pool
	Keep       bool          // keep the temp dir (logs, etcd data)
	Compare    string        // a published run's directory: compare Out's rounds with it instead of measuring
	Verbose    bool

	// The fifty-host phase (fifty.go) and the many-pools memory phase.
	Latency   time.Duration // one way, between every etcd client and etcd
	FiftyPool string
	Burst     int // allocations per burst, then as many releases
	BurstConc int
	Idle      time.Duration // the window in which nothing is asked
	MemPools  int           // 64k pools on one daemon
}

// allPhases run by default; extraPhases only when named.
var (
	allPhases   = []string{"initrange", "throughput", "latency", "rss", "exhausted"}
	extraPhases = []string{"fifty", "mempools"}
)

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("ipambench", flag.ContinueOnError)
	var c config
	fs.StringVar(&c.PluginBin, "plugin", "bin/talkingdata-ipam", "talkingdata-ipam binary (make build)")
	fs.StringVar(&c.IpamctlBin, "ipamctl", "bin/ipamctl", "ipamctl binary, for init-range")
	fs.StringVar(&c.EtcdBin, "etcd", "etcd", "etcd binary to start")
	fs.IntVar(&c.EtcdCluster, "etcd-cluster", 1, "start an etcd of this many members on loopback")
	endpoints := fs.String("etcd-endpoints", "", "use this etcd (comma-separated URLs) instead of starting one; keys go under a fresh prefix that is deleted at the end")
	fs.IntVar(&c.Instances, "instances", 3, "plugin daemons to start; the throughput sweep runs with 1 and with all")
	fs.StringVar(&c.Out, "out", "ipambench-out", "directory for the CSV, SVG and summary files")
	fs.StringVar(&c.Name, "name", "", "file name prefix (default etcd1, etcd3 or external)")
	phases := fs.String("phases", strings.Join(allPhases, ","), "what to measure: "+strings.Join(allPhases, ",")+
		"; or fifty (alone: -instances hosts, default 50, on a 3-member etcd behind -latency), mempools")
	conc := fs.String("concurrency", "1,2,4,8,16,32,64,128", "throughput sweep: concurrent requests")
	fs.StringVar(&c.Pool, "pool", "64k", "throughput sweep's pool: "+sizeNames())
	sizes := fs.String("sizes", "1k,64k,1M", "latency sweep's pools, smallest first: "+sizeNames())
	utils := fs.String("utils", "0,50,99", "latency sweep's pool utilisation in %, ascending")
	fs.IntVar(&c.Rounds, "rounds", 5, "rounds per point, alternating baseline and ours (at least 5 for a published median)")
	fs.DurationVar(&c.RoundTime, "round-time", time.Second, "duration of one throughput round")
	fs.DurationVar(&c.SerialTime, "serial-time", time.Second, "duration of one serial latency round")
	fs.IntVar(&c.InitRounds, "init-rounds", 3, "init-range timings of pools up to a /16 (larger pools: one)")
	fs.IntVar(&c.FillConc, "fill-concurrency", 64, "concurrent allocations filling a pool")
	fs.StringVar(&c.Compare, "compare", "", "measure nothing: set the rounds files in -out beside those of this directory (e.g. docs/perf) and say which reproduced")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temp dir with logs and etcd data")
	fs.BoolVar(&c.Verbose, "v", false, "log progress to stderr")
	fs.DurationVar(&c.Latency, "latency", 250*time.Microsecond, "fifty: one-way delay between every etcd client (daemons, the baseline) and etcd")
	fs.StringVar(&c.FiftyPool, "fifty-pool", "16k", "fifty: the pool every host's network shares: "+sizeNames())
	fs.IntVar(&c.Burst, "burst", 2000, "fifty: allocations per burst, spread over the hosts, then their releases")
	fs.IntVar(&c.BurstConc, "burst-concurrency", 64, "fifty: requests in flight during a burst")
	fs.DurationVar(&c.Idle, "idle", 10*time.Second, "fifty: the idle window in which etcd's CPU and watch traffic are measured")
	fs.IntVar(&c.MemPools, "mem-pools", 20, "mempools: pools of 64k addresses that one daemon loads")
	quick := fs.Bool("quick", false, "smoke run: tiny pools, short rounds, every phase once (overrides the sweep flags)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		*conc, c.Pool, *sizes, *utils = "1,4", "1k", "1k,4k", "0,50,99"
		c.Rounds, c.RoundTime, c.SerialTime, c.InitRounds, c.Instances = 2, 150*time.Millisecond, 100*time.Millisecond, 2, min(c.Instances, 2)
	}
	var err error
	if c.Concurrency, err = intList(*conc, 1, 4096); err != nil {
		return c, fmt.Errorf("-concurrency: %w", err)
	}
	if c.Utils, err = intList(*utils, 0, 99); err != nil {
		return c, fmt.Errorf("-utils: %w", err)
	}
	for i := 1; i < len(c.Utils); i++ {
		if c.Utils[i] <= c.Utils[i-1] {
			return c, fmt.Errorf("-utils %q: not ascending (a pool is only ever filled further)", *utils)
		}
	}
	if _, ok := poolSizes[c.Pool]; !ok {
		return c, fmt.Errorf("-pool %q: want one of %s", c.Pool, sizeNames())
	}
	for _, s := range splitList(*sizes) {
		if _, ok := poolSizes[s]; !ok {
			return c, fmt.Errorf("-sizes: %q: want one of %s", s, sizeNames())
		}
		c.Sizes = append(c.Sizes, s)
	}
	c.Phases = map[string]bool{}
	known := append(slices.Clone(allPhases), extraPhases...)
	for _, p := range splitList(*phases) {
		if !slices.Contains(known, p) {
			return c, fmt.Errorf("-phases: unknown %q (want %s)", p, strings.Join(known, ","))
		}
		c.Phases[p] = true
	}
	if c.Phases["fifty"] {
		// Its own setup: daemons behind latency links, which no other phase's figures assume.
		if len(c.Phases) > 1 {
			return c, fmt.Errorf("-phases fifty runs alone")
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["instances"] {
			c.Instances = 50
		}
		if !set["etcd-cluster"] {
			c.EtcdCluster = 3
		}
		if *endpoints != "" {
			return c, fmt.Errorf("-phases fifty starts its own etcd (its CPU time is measured): no -etcd-endpoints")
		}
		if _, ok := poolSizes[c.FiftyPool]; !ok {
			return c, fmt.Errorf("-fifty-pool %q: want one of %s", c.FiftyPool, sizeNames())
		}
		if c.Burst < 1 || c.BurstConc < 1 || c.Latency < 0 || c.Idle < 0 || c.Burst > poolSizes[c.FiftyPool].size() {
			return c, fmt.Errorf("-burst (at most the pool's size) and -burst-concurrency must be positive, -latency and -idle not negative")
		}
	}
	if c.Phases["mempools"] && (c.MemPools < 1 || c.MemPools > 256) {
		return c, fmt.Errorf("-mem-pools %d: want 1 to 256", c.MemPools)
	}
	c.EtcdEndpoints = splitList(*endpoints)
	switch {
	case len(c.EtcdEndpoints) > 0:
		c.EtcdCluster = 0
	case c.EtcdCluster < 1 || c.EtcdCluster > 7:
		return c, fmt.Errorf("-etcd-cluster %d: want 1 to 7 members", c.EtcdCluster)
	}
	if c.Name == "" {
		c.Name = fmt.Sprintf("etcd%d", c.EtcdCluster)
		if c.EtcdCluster == 0 {
			c.Name = "external"
		}
	}
	if c.Instances < 1 || c.Rounds < 1 || c.FillConc < 1 || c.InitRounds < 1 || c.RoundTime <= 0 || c.SerialTime <= 0 {
		return c, fmt.Errorf("-instances, -rounds, -init-rounds, -fill-concurrency, -round-time and -serial-time must be positive")
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func intList(s string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%q: want integers from %d to %d", f, lo, hi)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%q: empty", s)
	}
	return out, nil
}
