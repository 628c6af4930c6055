package e2e

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/lab"
)

// Issue 19, "Docker's view": many `docker run --rm` at once, on one host and
// on three hosts sharing one pool, take at most 1.05× the same on
// default-IPAM bridge networks of the same engines.
const (
	// 2,045 addresses: each talkingdata round takes 50-90 fresh ones and
	// a released one sits out the pool's 1-minute reuse delay, so a /24
	// would run dry within a few rounds.
	concTDSubnet   = "198.19.64.0/21"
	concOneHost    = 50 // runs per round on the one host
	concLabHosts   = 3
	concPerHost    = 30 // runs per host per round in the lab
	concPairs      = 5  // pairs of rounds: the fewest a published median may rest on
	concPairsEnv   = "IPAM_DOCKERRUN_PAIRS"
	concEnginesEnv = "IPAM_DOCKERRUN_ENGINES"
	concEngines    = "20.10,28.5"
)

// Lab host h's gateway on the shared pool, distinct per host (hosts 1-9;
// the one-host benchmark is host 1), and its default-IPAM subnet: default
// IPAM is host-local, so each host gets a /21 of its own, the size of the
// talkingdata one, from 198.19.72.0 on (below the lab dockerds' own
// 198.19.128.0/18).
func concGateway(h int) string   { return fmt.Sprintf("198.19.64.%d", h) }
func concDefSubnet(h int) string { return fmt.Sprintf("198.19.%d.0/21", 72+8*(h-1)) }

// BenchmarkDockerRunConcurrent times rounds of 50 `docker run --rm --network
// N busybox true` started at once on one dockerd, from their common start
// to the last one's exit: N is a bridge network with --ipam-driver
// talkingdata backed by a real etcd, or one with the default IPAM and the
// same bridge options. After a warm-up round on each side, rounds come in
// pairs, one per side in random order. Per engine ($IPAM_DOCKERRUN_ENGINES,
// default 20.10,28.5) it reports each side's median round with min and max
// and the ratio of the medians; any failed docker run fails it, and so does
// a pool not back to what it was.
//
//	go test ./e2e -run '^$' -bench '^BenchmarkDockerRunConcurrent$' -benchtime 1x -timeout 30m
func BenchmarkDockerRunConcurrent(b *testing.B) {
	pairs := envCount(b, concPairsEnv, concPairs)
	for _, e := range benchEngines(b) {
		b.Run(e.Name, func(b *testing.B) {
			etcd := etcdtest.Start(b)
			pluginDir := b.TempDir()
			// The daemon's default --request-timeout, as in production.
			p := startPlugin(b, pluginDir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", benchHost)
			d := dockertest.Start(b, dockertest.Options{PluginDir: pluginDir, Engine: e})
			image := d.ImportBusybox(b)
			store := etcdstore.New(etcd.Client(b), etcdstore.DefaultPrefix)
			subnet := netip.MustParsePrefix(concTDSubnet)
			createBenchNets(func(args ...string) { d.MustDocker(b, args...) }, concTDSubnet, concGateway(1), concDefSubnet(1))
			before := poolSnapshot(b, store, subnet)
			// The plugin's socket and etcd's data are in the benchmark's temp
			// directory; dockerd's and containerd's files in dockerd's root.
			markers := []string{filepath.Dir(pluginDir), filepath.Dir(strings.TrimPrefix(d.Host(), "unix://"))}
			x := burstBench{n: concOneHost, logs: []pluginLog{fileLog(b, p.log)}, markers: markers, run: func(side, _ int) error {
				_, err := d.Docker("run", "--rm", "--network", benchNets[side], image, "true")
				return err
			}}
			for b.Loop() {
				x.measure(b, pairs).report(b)
				checkNoLeaks(b, subnet, before, poolSnapshot(b, store, subnet))
			}
		})
	}
}

// BenchmarkDockerRunConcurrentLab is BenchmarkDockerRunConcurrent on a
// three-host lab (internal/lab: three dockerds, each with its plugin, and a
// three-member etcd), all hosts on one engine: a round starts 30 runs on
// every host at once, 90 in all, and lasts until the last exits. Each
// host's talkingdata network is a bridge on the one shared pool (its own
// gateway in it); each host's default-IPAM bridge has a subnet of its own.
//
//	go test ./e2e -run '^$' -bench '^BenchmarkDockerRunConcurrentLab$' -benchtime 1x -timeout 30m
func BenchmarkDockerRunConcurrentLab(b *testing.B) {
	pairs := envCount(b, concPairsEnv, concPairs)
	for _, e := range benchEngines(b) {
		b.Run(e.Name, func(b *testing.B) {
			l := lab.UpWith(b, lab.Options{Hosts: concLabHosts, BinDir: binDir, Engines: slices.Repeat([]dockertest.Engine{e}, concLabHosts)})
			ctl := labCtl(b, l)
			var logs []pluginLog
			for h := 1; h <= concLabHosts; h++ {
				createBenchNets(func(args ...string) { l.Docker(b, h, args...) }, concTDSubnet, concGateway(h), concDefSubnet(h))
				logs = append(logs, func() string { return l.PluginLog(h) })
			}
			usedBefore, freeBefore := labPool(b, ctl, concTDSubnet)
			x := burstBench{n: concLabHosts * concPerHost, logs: logs, markers: []string{l.Dir}, run: func(side, i int) error {
				_, err := l.TryDocker(i/concPerHost+1, "run", "--rm", "--network", benchNets[side], l.Image(), "true")
				return err
			}}
			for b.Loop() {
				x.measure(b, pairs).report(b)
				// check proves every seeded address free or used, never both,
				// and the owner index empty without container records: with
				// the same used set and free count, the free set is the same.
				ctl(1, "check", concTDSubnet)
				if used, free := labPool(b, ctl, concTDSubnet); !slices.Equal(used, usedBefore) || free != freeBefore {
					b.Fatalf("pool %s after the runs: used %v, %d free; before them: used %v, %d free", concTDSubnet, used, free, usedBefore, freeBefore)
				}
			}
		})
	}
}

// benchEngines are the engines named in $IPAM_DOCKERRUN_ENGINES, default
// concEngines (20.10 and 28.5, the pair issue 19 asks about).
func benchEngines(b *testing.B) []dockertest.Engine {
	var engines []dockertest.Engine
	for _, name := range dockertest.ParseEngineNames(cmp.Or(os.Getenv(concEnginesEnv), concEngines)) {
		engines = append(engines, dockertest.LookupEngine(b, name))
	}
	return engines
}

// labPool is subnet's used addresses, in order, and its free count, from
// ipamctl on host 1.
func labPool(b *testing.B, ctl func(host int, args ...string) string, subnet string) (used []string, free int64) {
	for _, u := range usedAddrsIn(b, ctl, subnet) {
		used = append(used, u.Address)
	}
	slices.Sort(used)
	var show struct{ Free int64 }
	if err := json.Unmarshal([]byte(ctl(1, "pool", "show", subnet, "--json")), &show); err != nil {
		b.Fatal(err)
	}
	return used, show.Free
}

// burstBench is one experiment of rounds of n docker runs started at once
// on one side (benchTDIdx or benchDefaultIdx).
type burstBench struct {
	n int
	// run does the i-th docker run of a round on side's network and
	// returns its error, which carries the CLI's stderr.
	run func(side, i int) error
	// logs are the debug logs of the talkingdata plugins the runs go
	// through, the runs spread evenly over them in order (run i goes
	// through logs[i*len(logs)/n]).
	logs []pluginLog
	// markers name the daemons whose CPU time a round counts: every
	// process whose command line contains one of these directories.
	markers []string
}

// cpuUse is the CPU time (user + system) of the benchmark's daemons: the
// plugins and etcd (ours) and dockerd with its containerd (docker's). On
// this shared machine what ours takes, dockerd cannot have.
type cpuUse struct{ ours, docker time.Duration }

// burstResult is what measure saw, per side.
type burstResult struct {
	rounds [2][]time.Duration // each round: first start to last exit
	runs   [2][]time.Duration // each docker run's own time, all rounds
	errs   [2][]error
	cpu    [2][]cpuUse               // each round's
	calls  []map[string][]pluginCall // by plugin (burstBench.logs), then method
	seed   uint64                    // of the pairs' order
	load   [2]string                 // /proc/loadavg before and after
}

// measure runs a warm-up round on each side (the first runs pay one-off
// costs: the image's first mounts, dockerd's first connection to the
// plugin, the plugin's first load of the pool), then pairs pairs of
// rounds. It fails the benchmark on any failed run, after counting them,
// and unless every talkingdata run went through its plugin once each way.
func (x burstBench) measure(b *testing.B, pairs int) burstResult {
	for side, name := range benchNets {
		wall, _, _, errs := x.burst(side)
		if len(errs) > 0 {
			b.Fatalf("warm-up round on %s: %d of %d runs failed, first: %v", name, len(errs), x.n, errs[0])
		}
		b.Logf("warm-up round on %s: %s", name, wall.Round(time.Millisecond))
	}
	r := burstResult{seed: uint64(time.Now().UnixNano()), load: [2]string{loadAvg(b)}}
	offsets := make([]int, len(x.logs))
	for i, log := range x.logs {
		offsets[i] = len(log())
	}
	inPairs(rand.New(rand.NewPCG(r.seed, 0)), pairs, func(side int) {
		wall, each, cpu, errs := x.burst(side)
		r.rounds[side] = append(r.rounds[side], wall)
		r.cpu[side] = append(r.cpu[side], cpu)
		r.runs[side] = append(r.runs[side], each...)
		r.errs[side] = append(r.errs[side], errs...)
	})
	r.load[1] = loadAvg(b)
	if nt, nd := len(r.errs[benchTDIdx]), len(r.errs[benchDefaultIdx]); nt+nd > 0 {
		first := slices.Concat(r.errs[benchTDIdx], r.errs[benchDefaultIdx])
		b.Fatalf("failed docker runs: talkingdata %d, default %d, of %d each; the first: %v", nt, nd, pairs*x.n, first[0])
	}
	for i, log := range x.logs {
		r.calls = append(r.calls, pluginCalls(b, log, offsets[i], pairs*x.n/len(x.logs)))
	}
	return r
}

// burst does one round on side: n runs released at once. It returns the
// wall time from their release to the last exit, each run's own time, the
// daemons' CPU time and the errors of the runs that failed.
func (x burstBench) burst(side int) (wall time.Duration, each []time.Duration, cpu cpuUse, errs []error) {
	each = make([]time.Duration, x.n)
	failed := make([]error, x.n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range x.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate // every goroutine is ready: the start is one instant for all
			start := time.Now()
			failed[i] = x.run(side, i)
			each[i] = time.Since(start)
		}()
	}
	cpu0 := cpuOf(x.markers)
	start := time.Now()
	close(gate)
	wg.Wait()
	wall = time.Since(start)
	cpu1 := cpuOf(x.markers)
	for _, err := range failed {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return wall, each, cpuUse{cpu1.ours - cpu0.ours, cpu1.docker - cpu0.docker}, errs
}

// cpuOf is the CPU time so far of the long-lived daemons whose command
// line contains one of markers. The docker CLIs, runc and the shims come
// and go within a round, so /proc cannot count them.
func cpuOf(markers []string) cpuUse {
	var u cpuUse
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		cmdline, err := os.ReadFile(dir + "/cmdline")
		if err != nil || !slices.ContainsFunc(markers, func(m string) bool { return strings.Contains(string(cmdline), m+"/") }) {
			continue
		}
		stat, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// comm is in parentheses and may hold spaces: fields count from
		// the last ")". utime and stime are fields 14 and 15, in ticks
		// of 1/100 s (USER_HZ on Linux).
		_, rest, _ := strings.Cut(string(stat), " (")
		i := strings.LastIndexByte(rest, ')')
		if i < 0 {
			continue
		}
		comm, f := rest[:i], strings.Fields(rest[i+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		t := time.Duration(ut+st) * 10 * time.Millisecond
		switch comm {
		case "talkingdata-ipa", "etcd": // comm is cut at 15 bytes
			u.ours += t
		case "dockerd", "containerd":
			u.docker += t
		}
	}
	return u
}

// report logs and reports r: per side the median round with min and max,
// the ratio of the medians and the median of the pairs' differences (each
// pair shares its drift).
func (r burstResult) report(b *testing.B) {
	td, def := r.rounds[benchTDIdx], r.rounds[benchDefaultIdx]
	diff := pairDiffs(td, def)
	for j := range td {
		b.Logf("pair %d: talkingdata %s, default %s", j+1, td[j].Round(time.Millisecond), def[j].Round(time.Millisecond))
	}
	for i, side := range []string{"talkingdata", "default"} {
		d := r.rounds[i]
		b.ReportMetric(millis(median(d)), side+"-median-ms")
		b.ReportMetric(millis(slices.Min(d)), side+"-min-ms")
		b.ReportMetric(millis(slices.Max(d)), side+"-max-ms")
		b.ReportMetric(float64(len(r.errs[i])), side+"-errors")
	}
	b.ReportMetric(float64(median(td))/float64(median(def)), "ratio")
	b.ReportMetric(millis(median(diff)), "pair-diff-median-ms")
	b.Logf("%d interleaved pairs of rounds (order seed %d), load average before %s, after %s:", len(td), r.seed, r.load[0], r.load[1])
	rows := []series{{"talkingdata round", td}, {"default round", def}, {"talkingdata - default, per pair", diff},
		{"talkingdata, each run", r.runs[benchTDIdx]}, {"default, each run", r.runs[benchDefaultIdx]}}
	// How much of a round the plugin can account for: dockerd (20.10 and
	// 28.5 alike) creates a network's endpoints, RequestAddress included,
	// one at a time under the network's lock (libnetwork's
	// Network.CreateEndpoint), so a round's critical path holds the sum of
	// its plugin's RequestAddress times, not their overlap.
	for _, method := range []string{"RequestAddress", "ReleaseAddress"} {
		var took []time.Duration
		var sum time.Duration
		most := 0
		for _, calls := range r.calls {
			took = append(took, tookOf(calls[method])...)
			most = max(most, mostInFlight(calls[method]))
		}
		for _, d := range took {
			sum += d
		}
		perRound := sum / time.Duration(len(td)*len(r.calls))
		rows = append(rows, series{"plugin " + method, took})
		b.Logf("  plugin %s: at most %d in flight at once on a plugin; %s per round per plugin in all", method, most, perRound.Round(time.Millisecond))
		b.ReportMetric(float64(most), method+"-max-inflight")
		b.ReportMetric(millis(perRound), method+"-sum-per-round-ms")
	}
	for i, side := range []string{"talkingdata", "default"} {
		var ours, docker []time.Duration
		for _, c := range r.cpu[i] {
			ours, docker = append(ours, c.ours), append(docker, c.docker)
		}
		rows = append(rows, series{side + " rounds: plugins+etcd CPU", ours}, series{side + " rounds: dockerd+containerd CPU", docker})
		b.ReportMetric(millis(median(ours)), side+"-rounds-ours-cpu-ms")
		b.ReportMetric(millis(median(docker)), side+"-rounds-dockerd-cpu-ms")
	}
	logSeries(b, rows)
}

// mostInFlight is the most calls that overlapped in time, each from end -
// took to end. The log's millisecond resolution can make calls less than
// 1 ms apart look overlapping; dockerd's work between two requests it
// serialises takes longer than that.
func mostInFlight(calls []pluginCall) int {
	type event struct {
		at    time.Time
		delta int
	}
	var events []event
	for _, c := range calls {
		events = append(events, event{c.end.Add(-c.took), 1}, event{c.end, -1})
	}
	// At the same instant an end goes first: touching is not overlapping.
	slices.SortFunc(events, func(a, b event) int { return cmp.Or(a.at.Compare(b.at), a.delta-b.delta) })
	n, most := 0, 0
	for _, e := range events {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// loadAvg is the machine's 1, 5 and 15-minute load averages.
func loadAvg(b *testing.B) string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatal(err)
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}
