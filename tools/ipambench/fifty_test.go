package main

import (
	"encoding/csv"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFiftySmoke is the fifty-host phase small, in `make test`: fifty daemons behind 250µs
// links on a 3-member etcd, one round of 300 allocations and their releases per side. The
// figures are not judged; its correctness checks are (no address granted twice, all released,
// the pool's counts back to its size, no errors), and that every figure was measured.
func TestFiftySmoke(t *testing.T) {
	res, out, _ := smokeRun(t, 100*time.Second, func(cfg config) {
		if cfg.Instances != 50 || cfg.EtcdCluster != 3 {
			t.Fatalf("fifty's defaults: %d daemons on %d members, want 50 on 3", cfg.Instances, cfg.EtcdCluster)
		}
	}, "-phases", "fifty", "-burst", "300", "-rounds", "1", "-latency", "250us", "-idle", "1s")

	f := res.Fifty
	if res.Errors != 0 || res.Duplicates != 0 || f == nil || len(f.Rounds) != 2 {
		t.Fatalf("%d errors, %d duplicates, fifty %+v", res.Errors, res.Duplicates, f)
	}
	if f.FirstUse.Ops != 50 || f.FirstUse.Errors != 0 {
		t.Errorf("first use: %d allocations, %d errors, want 50 and 0", f.FirstUse.Ops, f.FirstUse.Errors)
	}
	for _, fr := range f.Rounds {
		for name, rr := range map[string]roundResult{"allocations": fr.Alloc, "releases": fr.Release} {
			if rr.Ops != 300 || rr.Errors != 0 || rr.Dups != 0 || quantile(rr.Lat, .5) < 500*time.Microsecond {
				// A call crosses a link at least twice: below 2 × 250µs the links are not in the way.
				t.Errorf("%s %s: %d done, %d errors, %d duplicates, p50 %s: %s", fr.Side, name, rr.Ops, rr.Errors, rr.Dups,
					quantile(rr.Lat, .5), rr.FirstErr)
			}
		}
		if fr.EtcdCPU <= 0 || fr.FromEtcd <= 0 || fr.ToEtcd <= 0 {
			t.Errorf("%s: etcd CPU %s, %d bytes from etcd, %d to it", fr.Side, fr.EtcdCPU, fr.FromEtcd, fr.ToEtcd)
		}
	}
	if f.Idle.Took < time.Second || f.Idle.FromEtcd < 0 {
		t.Errorf("idle window %+v", f.Idle)
	}
	rss := 0
	for _, m := range res.Mem {
		if m.When == "fifty: end" && m.Mem.RSS > 0 {
			rss++
		}
	}
	if rss != 50 {
		t.Errorf("RSS of %d daemons at the end, want 50", rss)
	}
	fh, err := os.Open(filepath.Join(out, "etcd3-fifty.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	// Header, ours, baseline, first use, idle.
	if recs, err := csv.NewReader(fh).ReadAll(); err != nil || len(recs) != 5 {
		t.Errorf("fifty.csv: %d rows, %v", len(recs), err)
	}
}
