// Command chaos is the long form of the chaos test (issues 4 and 15): on a lab of three hosts
// and a three-member etcd cluster (scripts/lab.sh), workers allocate and release addresses
// through the three plugins' sockets, as dockerd's endpoints would, through phases of faults.
// The default phases:
//
//   - leader-kills: 4,000 operations through 3 leader kills (SIGKILL, restart); no request may
//     fail and the p99 of the calls must be at most 3s (issue 15's target);
//   - members: the leader and a follower frozen (SIGSTOP, SIGCONT 3s later) and a follower
//     down for 5s and restarted, twice each; no request may fail;
//   - plugin-kills: plugins killed with -9 and restarted; requests fail (dockerd sees a dead
//     socket), but nothing may be lost or leaked.
//
// Afterwards it checks etcd against what the endpoints hold: no address handed to two holders
// at once, every held address in used/, nothing else there, ipamctl check clean, and the free
// set equal to the seeded set once everything is released. It prints the counts, one line per
// phase (p50/p99, failed calls with their errors and the nearest fault, what each fault did),
// then the failures and the evidence of every anomaly, and exits 1 when anything failed. Needs
// root.
//
//	go run ./tools/chaos                                          # the default phases, a fresh lab
//	go run ./tools/chaos -phase leader-kills:4000:leader-kill*3:3s # issue 15's target alone
//	go run ./tools/chaos -lab ID -phase load:3000:                # no faults, a lab from `scripts/lab.sh up`
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
	var phases []harness.Phase
	flag.Func("phase", "a phase NAME:OPS:FAULTS[:MAXP99], repeatable, run in order: OPS operations at least, FAULTS comma-separated, KIND*N for N of them (kinds: "+
		strings.Join(harness.FaultKinds(), ", ")+"); default: "+phaseList(d.Phases), func(s string) error {
		p, err := harness.ParsePhase(s)
		phases = append(phases, p)
		return err
	})
	flag.IntVar(&cfg.Concurrency, "concurrency", d.Concurrency, "workers")
	flag.StringVar(&cfg.Subnet, "subnet", d.Subnet, "the network's --subnet")
	flag.StringVar(&cfg.IPRange, "ip-range", d.IPRange, "the network's --ip-range: the seeded addresses")
	flag.IntVar(&cfg.Sticky, "sticky", d.Sticky, "addresses allocated before the faults and held to the end")
	flag.Float64Var(&cfg.KeepPercent, "keep-percent", d.KeepPercent, "percentage of allocations under load held to the end")
	flag.IntVar(&cfg.MaxKeep, "max-keep", d.MaxKeep, "at most this many of those")
	flag.DurationVar(&cfg.MaxHold, "max-hold", d.MaxHold, "longest time an address is held before its release")
	flag.DurationVar(&cfg.FaultGap, "fault-gap", d.FaultGap, "load before each fault of a phase and after its last")
	flag.DurationVar(&cfg.EtcdDown, "etcd-down", d.EtcdDown, "how long a killed leader stays down")
	flag.DurationVar(&cfg.MemberDown, "member-down", d.MemberDown, "how long a restarted follower stays down")
	flag.DurationVar(&cfg.Freeze, "freeze", d.Freeze, "how long a frozen member stays stopped")
	flag.DurationVar(&cfg.PluginDown, "plugin-down", d.PluginDown, "how long a killed plugin stays down")
	flag.DurationVar(&cfg.MaxDuration, "max-duration", d.MaxDuration, "stop a phase after this long (a failure)")
	flag.DurationVar(&cfg.GiveUp, "give-up", d.GiveUp, "give an operation up after retrying this long")
	flag.IntVar(&cfg.ReleaseErrorRetries, "release-error-retries", d.ReleaseErrorRetries, "retries of a release answered with an error")
	flag.BoolVar(&cfg.FailOnErrorAnswer, "dockerd-errors", false, "an error answer to RequestAddress fails the endpoint, as dockerd does, instead of a retry with the same MAC")
	flag.Uint64Var(&cfg.Seed, "seed", 0, "random seed for the workers' and faults' choices (0: random)")
	flag.Parse()
	if phases != nil {
		cfg.Phases = phases
	}
	if !*quiet {
		cfg.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, cfg, *labID, lab.Options{BinDir: *binDir, PluginArgs: strings.Fields(*pluginArgs)}, *keep, *timeline))
}

func phaseList(ps []harness.Phase) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
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
