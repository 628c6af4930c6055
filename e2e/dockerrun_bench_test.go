package e2e

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// Issue 5's end-to-end target: `docker run --rm` on a talkingdata network
// takes at most 1.05× the same on a default-IPAM bridge network of the same
// dockerd.
const (
	benchTDNet      = "tdbench"
	benchTDSubnet   = "198.18.64.0/24"
	benchTDGateway  = "198.18.64.1"
	benchDefNet     = "defbench"
	benchDefSubnet  = "198.18.65.0/24"
	benchHost       = "bench-host"
	benchRuns       = 50                    // runs per network per experiment
	benchRunsEnv    = "IPAM_DOCKERRUN_RUNS" // overrides benchRuns for quick trials
	benchTDIdx      = 0                     // index of the talkingdata network in the arrays below
	benchDefaultIdx = 1
)

// BenchmarkDockerRun times `docker run --rm --network N busybox true` (the
// docker CLI's wall clock) on two bridge networks of one dockerd: one with
// --ipam-driver talkingdata backed by a real etcd, one with the default
// IPAM. One iteration is the whole experiment: benchRuns pairs, each pair
// one run on each network in random order, so drift in the machine's load
// hits both sides alike. It reports the median and p90 of each side, their
// ratio, the median of the pairs' differences (steadier than the ratio on a
// busy machine), and the plugin's own handling time per run (RequestAddress
// + ReleaseAddress, from the debug log startPlugin asks for), then proves the pool leak-free: only
// the gateway is used, the free set is what it was, and ipamctl check's
// invariants hold.
//
//	go test ./e2e -run '^$' -bench '^BenchmarkDockerRun$' -benchtime 1x
func BenchmarkDockerRun(b *testing.B) {
	runs := dockerRuns(b)
	etcd := etcdtest.Start(b)
	pluginDir := b.TempDir()
	p := startPlugin(b, pluginDir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", benchHost, "--request-timeout", "3s")
	d := dockertest.Start(b, dockertest.Options{PluginDir: pluginDir})
	image := d.ImportBusybox(b)
	store := etcdstore.New(etcd.Client(b), etcdstore.DefaultPrefix)
	subnet := netip.MustParsePrefix(benchTDSubnet)

	createBenchNets(func(args ...string) { d.MustDocker(b, args...) }, benchTDSubnet, benchTDGateway, benchDefSubnet)
	before := poolSnapshot(b, store, subnet)

	run := func(i int) time.Duration {
		start := time.Now()
		if out, err := d.Docker("run", "--rm", "--network", benchNets[i], image, "true"); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		return time.Since(start)
	}
	// The first run on each network pays one-off costs (the image's first
	// mount, dockerd's first connection to the plugin): not counted.
	for i := range benchNets {
		b.Logf("warm-up run on %s: %s", benchNets[i], run(i).Round(time.Millisecond))
	}

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	var took [2][]time.Duration
	var plugin []time.Duration // RequestAddress + ReleaseAddress, per talkingdata run
	var req, rel []time.Duration
	log := fileLog(b, p.log)
	for b.Loop() {
		logStart := len(log())
		inPairs(rng, runs, func(i int) { took[i] = append(took[i], run(i)) })
		calls := pluginCalls(b, log, logStart, runs)
		for j := range runs {
			plugin = append(plugin, calls["RequestAddress"][j].took+calls["ReleaseAddress"][j].took)
		}
		req, rel = append(req, tookOf(calls["RequestAddress"])...), append(rel, tookOf(calls["ReleaseAddress"])...)
		checkNoLeaks(b, subnet, before, poolSnapshot(b, store, subnet))
	}

	td, def := took[benchTDIdx], took[benchDefaultIdx]
	diff := pairDiffs(td, def)
	b.ReportMetric(millis(median(td)), "talkingdata-median-ms")
	b.ReportMetric(millis(percentile(td, 90)), "talkingdata-p90-ms")
	b.ReportMetric(millis(median(def)), "default-median-ms")
	b.ReportMetric(millis(percentile(def, 90)), "default-p90-ms")
	b.ReportMetric(float64(median(td))/float64(median(def)), "ratio")
	b.ReportMetric(millis(median(diff)), "pair-diff-median-ms")
	b.ReportMetric(millis(median(plugin)), "plugin-median-ms")
	b.Logf("%d interleaved pairs (pair order seed %d), docker run --rm … true:", len(td), seed)
	logSeries(b, []series{{"talkingdata", td}, {"default", def}, {"talkingdata - default, per pair", diff},
		{"plugin RequestAddress", req}, {"plugin ReleaseAddress", rel}, {"plugin both, per run", plugin}})
}

// benchNets are the networks createBenchNets makes, by side.
var benchNets = [2]string{benchTDIdx: benchTDNet, benchDefaultIdx: benchDefNet}

// The same bridge options on both sides: only the IPAM driver differs.
var benchBridgeOpts = []string{"-o", "com.docker.network.bridge.enable_ip_masquerade=false"}

// createBenchNets creates, through docker (which fails the benchmark on
// error), the talkingdata network benchTDNet and the default-IPAM network
// benchDefNet, both bridges with benchBridgeOpts.
func createBenchNets(docker func(args ...string), tdSubnet, tdGateway, defSubnet string) {
	docker(append([]string{"network", "create", "-d", "bridge", "--ipam-driver", "talkingdata",
		"--subnet", tdSubnet, "--gateway", tdGateway}, append(benchBridgeOpts, benchTDNet)...)...)
	docker(append([]string{"network", "create", "-d", "bridge",
		"--subnet", defSubnet}, append(benchBridgeOpts, benchDefNet)...)...)
}

// inPairs calls do(benchTDIdx) and do(benchDefaultIdx) n times each, every
// pair in random order, so drift in the machine's load hits both sides
// alike.
func inPairs(rng *rand.Rand, n int, do func(side int)) {
	for range n {
		first := rng.IntN(2)
		do(first)
		do(1 - first)
	}
}

// pairDiffs is td[j] - def[j] for each pair j: each pair's difference
// cancels the drift both of its sides share.
func pairDiffs(td, def []time.Duration) []time.Duration {
	diff := make([]time.Duration, len(td))
	for j := range td {
		diff[j] = td[j] - def[j]
	}
	return diff
}

// series is one named set of timings for logSeries.
type series struct {
	name string
	d    []time.Duration
}

// logSeries logs each series' min, median, mean, p90 and max in ms; empty
// ones are left out.
func logSeries(b *testing.B, rows []series) {
	for _, s := range rows {
		if len(s.d) == 0 {
			continue
		}
		b.Logf("  %-44s min %7.1f  median %7.1f  mean %7.1f  p90 %7.1f  max %7.1f ms", s.name,
			millis(slices.Min(s.d)), millis(median(s.d)), millis(mean(s.d)), millis(percentile(s.d, 90)), millis(slices.Max(s.d)))
	}
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// dockerRuns is benchRuns, or IPAM_DOCKERRUN_RUNS when set.
func dockerRuns(b *testing.B) int { return envCount(b, benchRunsEnv, benchRuns) }

// envCount is the positive number in $env, or def when it is unset.
func envCount(b *testing.B, env string, def int) int {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", env, s)
	}
	return n
}

// pluginLog returns a plugin's whole debug log so far.
type pluginLog func() string

// fileLog is the pluginLog of a plugin logging to path.
func fileLog(b *testing.B, path string) pluginLog {
	return func() string {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		return string(data)
	}
}

// pluginCall is one call in a plugin's debug log.
type pluginCall struct {
	end  time.Time // when it was logged, just after the answer; slog's text has ms resolution
	took time.Duration
}

// tookOf is how long each call took.
func tookOf(calls []pluginCall) []time.Duration {
	d := make([]time.Duration, len(calls))
	for i, c := range calls {
		d[i] = c.took
	}
	return d
}

// pluginCalls reads the plugin's debug log from offset on and returns, per
// IPAM method, its calls in order. It fails unless
// RequestAddress and ReleaseAddress were each called exactly runs times:
// every talkingdata run went through the plugin once each way, and no
// default-IPAM run did. (The plugin logs a call just after answering it,
// so the last line may trail the last run by a moment.)
func pluginCalls(b *testing.B, log pluginLog, offset int, runs int) map[string][]pluginCall {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		calls := parsePluginCalls(b, log()[offset:])
		req, rel := len(calls["RequestAddress"]), len(calls["ReleaseAddress"])
		if req == runs && rel == runs {
			return calls
		}
		if req > runs || rel > runs || time.Now().After(deadline) {
			b.Fatalf("the plugin logged %d RequestAddress and %d ReleaseAddress calls during %d talkingdata runs; want one each per run", req, rel, runs)
		}
	}
}

func parsePluginCalls(b *testing.B, log string) map[string][]pluginCall {
	calls := map[string][]pluginCall{}
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="plugin call"`) {
			continue
		}
		var method string
		var c pluginCall
		for _, field := range strings.Fields(line) {
			var err error
			if v, ok := strings.CutPrefix(field, "method=/IpamDriver."); ok {
				method = v
			} else if v, ok := strings.CutPrefix(field, "took="); ok {
				c.took, err = time.ParseDuration(v)
			} else if v, ok := strings.CutPrefix(field, "time="); ok {
				c.end, err = time.Parse(time.RFC3339Nano, v)
			}
			if err != nil {
				b.Fatalf("plugin log: %q: %v", line, err)
			}
		}
		calls[method] = append(calls[method], c)
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return calls
}

func poolSnapshot(b *testing.B, store *etcdstore.Store, subnet netip.Prefix) pool.Snapshot {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snap, err := store.Snapshot(ctx, subnet)
	if err != nil {
		b.Fatal(err)
	}
	return snap
}

// checkNoLeaks fails unless, after the runs, the pool uses exactly the
// addresses it used before them (the gateways), its free set is the one it
// had, and its invariants hold (the checks of ipamctl check, on one
// revision).
func checkNoLeaks(b *testing.B, subnet netip.Prefix, before, after pool.Snapshot) {
	if anomalies := pool.Check(after); len(anomalies) > 0 {
		b.Fatalf("pool %s after the runs: %+v", subnet, anomalies)
	}
	if want := usedAddrsOf(before); !slices.Equal(want, usedAddrsOf(after)) {
		var used []string
		for a, rec := range after.Used {
			used = append(used, fmt.Sprintf("%s %s", a, rec))
		}
		b.Fatalf("pool %s after the runs uses %d addresses, want only the %d used before them %v:\n%s",
			subnet, len(after.Used), len(want), want, strings.Join(used, "\n"))
	}
	if len(after.Owners) != 0 {
		b.Fatalf("owner index after the runs: %v, want empty", after.Owners)
	}
	if !slices.Equal(before.Free, after.Free) {
		b.Fatalf("free addresses: %d before the runs, %d after; want the same set", len(before.Free), len(after.Free))
	}
}

// usedAddrsOf lists a snapshot's used addresses in order.
func usedAddrsOf(s pool.Snapshot) []netip.Addr {
	return slices.SortedFunc(maps.Keys(s.Used), netip.Addr.Compare)
}

func median(d []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(d))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// percentile is the nearest-rank p-th percentile.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Sorted(slices.Values(d))
	k := (p*len(s) + 99) / 100 // ceil(p/100 · n)
	return s[max(k, 1)-1]
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}
