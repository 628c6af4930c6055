package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// TestQuick is the smoke run of `make test`: the tool's -quick mode against a real etcd it
// starts and real daemons built from this tree. Every phase runs once on tiny pools; the
// figures are not judged, but errors, duplicates, empty measurements and missing files are.
func TestQuick(t *testing.T) {
	res, out, printed := smokeRun(t, 50*time.Second, func(config) {}, "-quick")

	if res.Errors != 0 || res.Duplicates != 0 {
		t.Errorf("%d errors, %d duplicates", res.Errors, res.Duplicates)
	}
	// -quick: concurrency 1 and 4 × baseline, 1 and 2 instances; pools 1k and 4k × 3 utilisations × 2 sides.
	if len(res.Throughput) != 6 || len(res.Latency) != 12 || res.Exhausted == nil || len(res.InitRange) != 4 {
		t.Fatalf("points: %d throughput, %d latency, exhausted %v, %d init-range", len(res.Throughput), len(res.Latency), res.Exhausted != nil, len(res.InitRange))
	}
	for _, p := range append(append([]pointRow{}, res.Throughput...), res.Latency...) {
		if p.Ops == 0 || p.Rate <= 0 || p.P50 <= 0 || p.P99 < p.P50 || p.Max < p.P99 {
			t.Errorf("%s %s/%d c=%d pool %s %d%%: %d ops, %.0f/s, p50 %s p99 %s max %s", p.Phase, p.Side, p.Instances, p.Concurrency,
				p.Pool, p.Util, p.Ops, p.Rate, p.P50, p.P99, p.Max)
		}
	}
	for name, e := range map[string]*pointRow{"exhausted pool": res.Exhausted, "protocol floor": res.Floor} {
		if e == nil || e.Ops == 0 || e.Errors != 0 || e.P50 <= 0 {
			t.Errorf("%s: %+v", name, e)
		}
	}
	for _, i := range res.InitRange {
		if i.Ours <= 0 || i.Baseline <= 0 || i.MaxRSSKiB <= 0 {
			t.Errorf("init-range %+v", i)
		}
	}
	for _, m := range res.Mem {
		if m.Mem.RSS <= 0 || m.Mem.HWM < m.Mem.RSS {
			t.Errorf("memory %+v", m)
		}
	}

	for name, rows := range map[string]int{"throughput.csv": 7, "latency.csv": 13, "exhausted.csv": 3, "initrange.csv": 5, "targets.csv": 0, "memory.csv": 0, "rounds.csv": 0} {
		f, err := os.Open(filepath.Join(out, "etcd1-"+name))
		if err != nil {
			t.Error(err)
			continue
		}
		recs, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil || (rows > 0 && len(recs) != rows) || len(recs) < 2 {
			t.Errorf("%s: %d rows (want %d), %v", name, len(recs), rows, err)
		}
	}
	for _, name := range []string{"throughput.svg", "latency.svg"} {
		b, err := os.ReadFile(filepath.Join(out, "etcd1-"+name))
		if err != nil || !bytes.HasPrefix(b, []byte("<svg")) || bytes.Count(b, []byte("<polyline")) < 3 || !bytes.Contains(b, []byte("baseline")) {
			t.Errorf("%s: not a chart with three lines and a baseline (%v):\n%.300s", name, err, b)
		}
	}
	summary, err := os.ReadFile(filepath.Join(out, "etcd1-summary.txt"))
	if err != nil || !strings.Contains(string(summary), "errors / duplicates, all rounds") || string(summary) != printed {
		t.Errorf("summary file: %v\n%s", err, summary)
	}
}

// smokeRun runs the tool with args on binaries built from this tree, within timeout, after
// check has seen its settings; it returns the results, the output directory and the summary
// printed.
func smokeRun(t *testing.T, timeout time.Duration, check func(config), args ...string) (res *results, out, summary string) {
	t.Helper()
	dir := buildBinaries(t)
	out = filepath.Join(dir, "out")
	cfg, err := parseFlags(append(args, "-plugin", filepath.Join(dir, "talkingdata-ipam"), "-ipamctl", filepath.Join(dir, "ipamctl"), "-out", out))
	if err != nil {
		t.Fatal(err)
	}
	check(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	var stdout, stderr bytes.Buffer
	res, err = run(ctx, cfg, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("took %s\nprogress:\n%s\nsummary:\n%s", time.Since(start).Round(time.Millisecond), stderr.String(), stdout.String())
	return res, out, stdout.String()
}

// buildBinaries builds the daemon and ipamctl from this tree into a temp dir, which it returns;
// it skips without etcd.
func buildBinaries(t *testing.T) string {
	t.Helper()
	_, err := exec.LookPath("etcd")
	testproc.Require(t, err == nil, "ipambench: no etcd binary (Debian package etcd-server)")
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "../../cmd/talkingdata-ipam", "../../cmd/ipamctl")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	return dir
}

// TestHeld: the duplicate detector must see an address granted to two holders at once, and
// must not count a grant that follows a release in flight.
func TestHeld(t *testing.T) {
	h := newHeld()
	a := netip.MustParseAddr("198.18.0.1")
	if h.grant(a, 1) {
		t.Fatal("first grant counted as duplicate")
	}
	if !h.grant(a, 2) {
		t.Fatal("second grant while held not counted")
	}
	h.releasing(a, 2)
	if h.grant(a, 3) {
		t.Fatal("grant during a release counted as duplicate")
	}
	h.drop(a, 2) // the old holder's release answer arrives late: 3 still holds it
	if !h.grant(a, 4) {
		t.Fatal("late drop of an earlier holder forgot the current one")
	}
}

// TestPoolSizes keeps the pools where the issue puts them: 198.18.0.0/15 and 2001:db8::/32, and
// as large as their names say.
func TestPoolSizes(t *testing.T) {
	want := map[string]int{"1k": 1022, "4k": 4096, "16k": 16382, "64k": 65534, "1M": 1 << 20}
	bench, doc := netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:db8::/32")
	for name, s := range poolSizes {
		if got := s.size(); got != want[name] {
			t.Errorf("pool %s: %d addresses, want %d", name, got, want[name])
		}
		p := netip.MustParsePrefix(s.subnet)
		if !bench.Contains(p.Addr()) && !doc.Contains(p.Addr()) || p.Bits() < 15 {
			t.Errorf("pool %s: subnet %s outside 198.18.0.0/15 and 2001:db8::/32", name, p)
		}
	}
}

func TestQuantileMedian(t *testing.T) {
	lat := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if q := quantile(lat, .5); q != 5 {
		t.Errorf("p50 = %d", q)
	}
	if q := quantile(lat, .99); q != 10 {
		t.Errorf("p99 = %d", q)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
}

// TestMemPoolsSmoke is make bench's many-pools phase small: one daemon loads 3 pools of 64k, an
// allocation and its release each, after which each pool's counts must be whole again (a
// release answered before its commit made the check fail once), and memory is recorded.
func TestMemPoolsSmoke(t *testing.T) {
	res, _, _ := smokeRun(t, 60*time.Second, func(config) {}, "-phases", "mempools", "-instances", "1", "-mem-pools", "3")
	if res.Errors != 0 || res.Duplicates != 0 {
		t.Errorf("%d errors, %d duplicates", res.Errors, res.Duplicates)
	}
	var loaded bool
	for _, m := range res.Mem {
		loaded = loaded || m.When == "3 pools of 64k loaded" && m.Mem.RSS > 0
	}
	if !loaded {
		t.Errorf("no memory recorded with the 3 pools loaded: %+v", res.Mem)
	}
}
