// Command chaos is the long form of the chaos test (issue 4): on a lab of three hosts and a
// three-member etcd cluster (scripts/lab.sh), workers allocate and release addresses through
// the three plugins' sockets, as dockerd's endpoints would, while the etcd leader is killed and
// restarted every few seconds and plugins are killed with SIGKILL and restarted. Afterwards it
// checks etcd against what the endpoints hold: no address handed to two holders at once, every
// held address in used/, nothing else there, ipamctl check clean, and the free set equal to the
// seeded set once everything is released. It prints one result line with the counts, then the
// failures and the evidence of every anomaly, and exits 1 when anything failed. Needs root.
//
//	go run ./tools/chaos -ops 20000 -concurrency 32             # a fresh lab, torn down after
//	go run ./tools/chaos -lab ID -ops 3000                      # a lab from `scripts/lab.sh up`
//
// A lab of your own should run its plugins with TDLAB_PLUGIN_ARGS=--reuse-delay=0s, as a fresh
// one does by default: with the 60s reuse delay a 1024-address range runs dry under this churn.
//
// Operations count RequestAddress and ReleaseAddress calls as dockerd makes them, each once
// however often it was re-sent.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/talkingdata/ipam/internal/lab"
	"github.com/talkingdata/ipam/tools/chaos/harness"
)

func main() {
	d := harness.Defaults
	cfg := d
	labID := flag.String("lab", "", "run on this running lab (scripts/lab.sh up) instead of a fresh one; it must not have used the subnet yet")
	binDir := flag.String("bin", "", "for a fresh lab: directory with talkingdata-ipam and ipamctl (default: build the working tree)")
	pluginArgs := flag.String("plugin-args", "--reuse-delay=0s", "for a fresh lab: extra talkingdata-ipam flags, space-separated (no reuse delay by default: with it a 1024-address range allows ~17 allocations/s, and it would hide an address handed out again within the delay)")
	keep := flag.Bool("keep", false, "leave the fresh lab up afterwards, for inspection")
	timeline := flag.Bool("timeline", false, "print the timeline of phases and faults")
	quiet := flag.Bool("q", false, "no progress lines")
	flag.IntVar(&cfg.Ops, "ops", d.Ops, "logical operations (allocations + releases) to complete at least")
	flag.IntVar(&cfg.Concurrency, "concurrency", d.Concurrency, "workers")
	flag.StringVar(&cfg.Subnet, "subnet", d.Subnet, "the network's --subnet")
	flag.StringVar(&cfg.IPRange, "ip-range", d.IPRange, "the network's --ip-range: the seeded addresses")
	flag.IntVar(&cfg.Sticky, "sticky", d.Sticky, "addresses allocated before the faults and held to the end")
	flag.Float64Var(&cfg.KeepPercent, "keep-percent", d.KeepPercent, "percentage of allocations under load held to the end")
	flag.IntVar(&cfg.MaxKeep, "max-keep", d.MaxKeep, "at most this many of those")
	flag.DurationVar(&cfg.MaxHold, "max-hold", d.MaxHold, "longest time an address is held before its release")
	noFaults := flag.Bool("no-faults", false, "no faults: the load alone")
	flag.DurationVar(&cfg.LeaderEvery, "leader-every", d.LeaderEvery, "period of the etcd leader kills")
	flag.DurationVar(&cfg.EtcdDown, "etcd-down", d.EtcdDown, "how long a killed member stays down")
	flag.DurationVar(&cfg.PluginEvery, "plugin-every", d.PluginEvery, "period of the plugin kills")
	flag.DurationVar(&cfg.PluginDown, "plugin-down", d.PluginDown, "how long a killed plugin stays down")
	flag.IntVar(&cfg.MinLeaderKills, "min-leader-kills", d.MinLeaderKills, "keep the load going until this many leader kills")
	flag.IntVar(&cfg.MinPluginKills, "min-plugin-kills", d.MinPluginKills, "keep the load going until this many plugin kills")
	flag.DurationVar(&cfg.MaxDuration, "max-duration", d.MaxDuration, "stop the load after this long (a failure)")
	flag.DurationVar(&cfg.GiveUp, "give-up", d.GiveUp, "give an operation up after retrying this long")
	flag.IntVar(&cfg.ReleaseErrorRetries, "release-error-retries", d.ReleaseErrorRetries, "retries of a release answered with an error")
	flag.BoolVar(&cfg.FailOnErrorAnswer, "dockerd-errors", false, "an error answer to RequestAddress fails the endpoint, as dockerd does, instead of a retry with the same MAC")
	flag.Uint64Var(&cfg.Seed, "seed", 0, "random seed for the workers' and faults' choices (0: random)")
	flag.Parse()
	cfg.Faults = !*noFaults
	if !*quiet {
		cfg.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, cfg, *labID, lab.Options{BinDir: *binDir, PluginArgs: strings.Fields(*pluginArgs)}, *keep, *timeline))
}

func run(ctx context.Context, cfg harness.Config, labID string, o lab.Options, keep, timeline bool) int {
	var l *lab.Lab
	var err error
	if labID != "" {
		l, err = lab.Open(labID)
	} else {
		start := time.Now()
		fmt.Fprintln(os.Stderr, "chaos: bringing a lab up (3 hosts, 3 etcd members)")
		l, err = lab.Start(o)
		if err == nil {
			fmt.Fprintf(os.Stderr, "chaos: lab %s up in %s (%s)\n", l.ID, time.Since(start).Round(10*time.Millisecond), l.Dir)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	res, err := harness.Run(ctx, l, cfg)
	code := 0
	if res != nil {
		fmt.Print(res.Report(timeline))
		if len(res.Failures) > 0 {
			code = 1
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: harness error:", err)
		code = 2
	}
	if code != 0 && labID == "" {
		fmt.Fprintf(os.Stderr, "chaos: logs of lab %s:\n%s", l.ID, l.LogTails(15))
	}
	if labID == "" {
		if keep {
			fmt.Fprintf(os.Stderr, "chaos: lab %s left up (the next lab up prunes it, its owner being gone); remove it with: scripts/lab.sh down %s\n", l.ID, l.ID)
		} else if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			if code == 0 {
				code = 2
			}
		}
	}
	return code
}
