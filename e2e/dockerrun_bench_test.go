package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

	// The same bridge options on both sides: only the IPAM driver differs.
	bridgeOpts := []string{"-o", "com.docker.network.bridge.enable_ip_masquerade=false"}
	d.MustDocker(b, append([]string{"network", "create", "-d", "bridge", "--ipam-driver", "talkingdata",
		"--subnet", benchTDSubnet, "--gateway", benchTDGateway}, append(bridgeOpts, benchTDNet)...)...)
	d.MustDocker(b, append([]string{"network", "create", "-d", "bridge",
		"--subnet", benchDefSubnet}, append(bridgeOpts, benchDefNet)...)...)
	before := poolSnapshot(b, store, subnet)

	nets := [2]string{benchTDNet, benchDefNet}
	run := func(i int) time.Duration {
		start := time.Now()
		if out, err := d.Docker("run", "--rm", "--network", nets[i], image, "true"); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		return time.Since(start)
	}
	// The first run on each network pays one-off costs (the image's first
	// mount, dockerd's first connection to the plugin): not counted.
	for i := range nets {
		b.Logf("warm-up run on %s: %s", nets[i], run(i).Round(time.Millisecond))
	}

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	var took [2][]time.Duration
	var plugin []time.Duration // RequestAddress + ReleaseAddress, per talkingdata run
	var req, rel []time.Duration
	for b.Loop() {
		logStart := fileSize(b, p.log)
		for range runs {
			first := rng.IntN(2)
			for _, i := range []int{first, 1 - first} {
				took[i] = append(took[i], run(i))
			}
		}
		calls := pluginCalls(b, p.log, logStart, runs)
		for j := range runs {
			plugin = append(plugin, calls["RequestAddress"][j]+calls["ReleaseAddress"][j])
		}
		req, rel = append(req, calls["RequestAddress"]...), append(rel, calls["ReleaseAddress"]...)
		checkNoLeaks(b, before, poolSnapshot(b, store, subnet))
	}

	td, def := took[benchTDIdx], took[benchDefaultIdx]
	// Each pair's difference cancels the drift both of its runs share.
	diff := make([]time.Duration, len(td))
	for j := range td {
		diff[j] = td[j] - def[j]
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(median(td)), "talkingdata-median-ms")
	b.ReportMetric(ms(percentile(td, 90)), "talkingdata-p90-ms")
	b.ReportMetric(ms(median(def)), "default-median-ms")
	b.ReportMetric(ms(percentile(def, 90)), "default-p90-ms")
	b.ReportMetric(float64(median(td))/float64(median(def)), "ratio")
	b.ReportMetric(ms(median(diff)), "pair-diff-median-ms")
	b.ReportMetric(ms(median(plugin)), "plugin-median-ms")
	b.Logf("%d interleaved pairs (pair order seed %d), docker run --rm … true:", len(td), seed)
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{{"talkingdata", td}, {"default", def}, {"talkingdata - default, per pair", diff},
		{"plugin RequestAddress", req}, {"plugin ReleaseAddress", rel}, {"plugin both, per run", plugin}} {
		b.Logf("  %-32s min %6.1f  median %6.1f  mean %6.1f  p90 %6.1f  max %6.1f ms", s.name,
			ms(slices.Min(s.d)), ms(median(s.d)), ms(mean(s.d)), ms(percentile(s.d, 90)), ms(slices.Max(s.d)))
	}
}

// dockerRuns is benchRuns, or IPAM_DOCKERRUN_RUNS when set.
func dockerRuns(b *testing.B) int {
	s := os.Getenv(benchRunsEnv)
	if s == "" {
		return benchRuns
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number of runs", benchRunsEnv, s)
	}
	return n
}

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// pluginCalls reads the plugin's debug log from offset on and returns, per
// IPAM method, how long each call took, in order. It fails unless
// RequestAddress and ReleaseAddress were each called exactly runs times:
// every talkingdata run went through the plugin once each way, and no
// default-IPAM run did. (The plugin logs a call just after answering it,
// so the last line may trail the last run by a moment.)
func pluginCalls(b *testing.B, log string, offset int64, runs int) map[string][]time.Duration {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		calls := readPluginCalls(b, log, offset)
		req, rel := len(calls["RequestAddress"]), len(calls["ReleaseAddress"])
		if req == runs && rel == runs {
			return calls
		}
		if req > runs || rel > runs || time.Now().After(deadline) {
			b.Fatalf("the plugin logged %d RequestAddress and %d ReleaseAddress calls during %d talkingdata runs; want one each per run", req, rel, runs)
		}
	}
}

func readPluginCalls(b *testing.B, log string, offset int64) map[string][]time.Duration {
	f, err := os.Open(log)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		b.Fatal(err)
	}
	calls := map[string][]time.Duration{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="plugin call"`) {
			continue
		}
		var method string
		var took time.Duration
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "method=/IpamDriver."); ok {
				method = v
			} else if v, ok := strings.CutPrefix(field, "took="); ok {
				if took, err = time.ParseDuration(v); err != nil {
					b.Fatalf("plugin log: %q: %v", line, err)
				}
			}
		}
		calls[method] = append(calls[method], took)
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

// checkNoLeaks fails unless, after the runs, the pool holds nothing but the
// gateway, its free set is the one it had before them, and its invariants
// hold (the checks of ipamctl check, on one revision).
func checkNoLeaks(b *testing.B, before, after pool.Snapshot) {
	if anomalies := pool.Check(after); len(anomalies) > 0 {
		b.Fatalf("pool %s after the runs: %+v", benchTDSubnet, anomalies)
	}
	gw := netip.MustParseAddr(benchTDGateway)
	if _, ok := after.Used[gw]; !ok || len(after.Used) != 1 {
		var used []string
		for a, rec := range after.Used {
			used = append(used, fmt.Sprintf("%s %s", a, rec))
		}
		b.Fatalf("pool %s after the runs uses %d addresses, want only the gateway %s:\n%s", benchTDSubnet, len(after.Used), gw, strings.Join(used, "\n"))
	}
	if len(after.Owners) != 0 {
		b.Fatalf("owner index after the runs: %v, want empty", after.Owners)
	}
	if !slices.Equal(before.Free, after.Free) {
		b.Fatalf("free addresses: %d before the runs, %d after; want the same set", len(before.Free), len(after.Free))
	}
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
