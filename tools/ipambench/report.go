package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
)

// results is everything a run measured.
type results struct {
	Name, Setup string
	Pool        string // the throughput pool
	Start       time.Time
	Duration    time.Duration

	Rounds     []roundRow // every round, as measured
	Throughput []pointRow // medians per point and side
	Latency    []pointRow
	Exhausted  *pointRow
	Floor      *pointRow // a plugin call without etcd work
	InitRange  []initRow
	Mem        []memRow
	Fifty      *fiftyResult
	Targets    []target

	Errors, Duplicates int64 // over every round
}

type pointRow struct {
	Phase, Side            string // "baseline" or "ours"
	Instances, Concurrency int    // Instances 0: the baseline
	Pool                   string
	Addrs, Util, Used      int
	stats
}

type roundRow struct {
	pointRow
	Round   int
	Elapsed time.Duration
}

type initRow struct {
	Pool           string
	Addrs, Round   int
	Ours, Baseline time.Duration
	MaxRSSKiB      int64 // ipamctl's peak
}

type memRow struct {
	When, Daemon string
	Mem          memStatus
}

func (res *results) addRound(phase, side string, instances, c int, p *benchPool, util, round int, rr roundResult) {
	st := summarize([]roundResult{rr})
	res.Errors += rr.Errors
	res.Duplicates += rr.Dups
	res.Rounds = append(res.Rounds, roundRow{pointRow: pointRow{Phase: phase, Side: side, Instances: instances, Concurrency: c,
		Pool: p.spec.name, Addrs: p.size, Util: util, Used: p.used, stats: st}, Round: round, Elapsed: rr.Elapsed})
}

// report computes the targets and writes the table to stdout and the files to Out.
func (r *runner) report() error {
	res := r.res
	res.Pool = r.cfg.Pool
	res.Targets = targets(res, len(r.daemons))
	var b bytes.Buffer
	printSummary(&b, res)
	if _, err := r.out.Write(b.Bytes()); err != nil {
		return err
	}
	files := map[string][]byte{"summary.txt": b.Bytes()}
	for name, table := range csvTables(res) {
		var c bytes.Buffer
		w := csv.NewWriter(&c)
		if err := w.WriteAll(table); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		files[name] = c.Bytes()
	}
	if len(res.Throughput) > 0 {
		files["throughput.svg"] = throughputChart(res, len(r.daemons)).svg()
	}
	if len(res.Latency) > 0 {
		files["latency.svg"] = latencyChart(res).svg()
	}
	for name, data := range files {
		path := filepath.Join(r.cfg.Out, res.Name+"-"+name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return fmt.Errorf("writing results: %w", err)
		}
	}
	r.logf("wrote %d files to %s/%s-*; the run took %s", len(files), r.cfg.Out, res.Name, res.Duration.Round(time.Second))
	return nil
}

func printSummary(w io.Writer, res *results) {
	fmt.Fprintf(w, "ipambench %s: %s\n", res.Name, res.Setup)
	fmt.Fprintf(w, "run took %s; errors %d, duplicates %d\n", res.Duration.Round(time.Second), res.Errors, res.Duplicates)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(res.Throughput) > 0 {
		fmt.Fprintf(tw, "\nTHROUGHPUT\tPOOL\tCONCURRENCY\tCYCLES/S\tP50\tP99\tMAX\tRATE/BASELINE\tERRORS\tDUPLICATES\n")
		for _, p := range res.Throughput {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%d\t%d\n", sideName(p), p.Pool, p.Concurrency, p.Rate,
				fmtDur(p.P50), fmtDur(p.P99), fmtDur(p.Max), ratioOf(p.Rate, baselineOf(res.Throughput, p).Rate), p.Errors, p.Dups)
		}
	}
	if len(res.Latency) > 0 {
		fmt.Fprintf(tw, "\nSERIAL LATENCY\tPOOL\tUTILISATION\tP50\tP99\tMAX\tP50/BASELINE\tERRORS\tDUPLICATES\n")
		for _, p := range res.Latency {
			fmt.Fprintf(tw, "%s\t%s (%d)\t%d%%\t%s\t%s\t%s\t%s\t%d\t%d\n", sideName(p), p.Pool, p.Addrs, p.Util,
				fmtDur(p.P50), fmtDur(p.P99), fmtDur(p.Max), ratioOf(p.P50.Seconds(), baselineOf(res.Latency, p).P50.Seconds()), p.Errors, p.Dups)
		}
	}
	if len(res.InitRange) > 0 {
		fmt.Fprintf(tw, "\nINIT-RANGE\tADDRESSES\tROUND\tIPAMCTL\tIPAMCTL PEAK RSS\tBASELINE PUTS\tRATIO\n")
		for _, i := range res.InitRange {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", i.Pool, i.Addrs, i.Round, fmtDur(i.Ours), fmtMB(i.MaxRSSKiB),
				fmtDur(i.Baseline), ratioOf(i.Ours.Seconds(), i.Baseline.Seconds()))
		}
	}
	if len(res.Mem) > 0 {
		fmt.Fprintf(tw, "\nDAEMON MEMORY\tDAEMON\tVMRSS\tVMHWM\n")
		for _, g := range memGroups(res.Mem) {
			if len(g) <= 3 {
				for _, m := range g {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.When, m.Daemon, fmtMB(m.Mem.RSS), fmtMB(m.Mem.HWM))
				}
				continue
			}
			// Fifty daemons: their sum and spread, each one is in memory.csv.
			var rss, hwm []int64
			for _, m := range g {
				rss, hwm = append(rss, m.Mem.RSS), append(hwm, m.Mem.HWM)
			}
			fmt.Fprintf(tw, "%s\t%d daemons, sum\t%s\t%s\n", g[0].When, len(g), fmtMB(sum(rss)), fmtMB(sum(hwm)))
			fmt.Fprintf(tw, "%s\tper daemon, median [min-max]\t%s [%s-%s]\t%s [%s-%s]\n", g[0].When, fmtMB(median(rss)),
				fmtMB(slices.Min(rss)), fmtMB(slices.Max(rss)), fmtMB(median(hwm)), fmtMB(slices.Min(hwm)), fmtMB(slices.Max(hwm)))
		}
	}
	if res.Fifty != nil {
		tw.Flush()
		printFifty(w, res.Fifty)
	}
	fmt.Fprintf(tw, "\nTARGET\tOURS\tREFERENCE\tRATIO\tLIMIT\tRESULT\n")
	for _, t := range res.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Ours, t.Reference, t.Ratio, t.Limit, t.Result)
	}
	tw.Flush()
}

func sideName(p pointRow) string {
	if p.Side == "baseline" {
		return "baseline"
	}
	return "ours, " + instancesName(p.Instances)
}

// baselineOf is the baseline point measured alongside p.
func baselineOf(rows []pointRow, p pointRow) pointRow {
	for _, b := range rows {
		if b.Side == "baseline" && b.Pool == p.Pool && b.Util == p.Util && b.Concurrency == p.Concurrency {
			return b
		}
	}
	return pointRow{}
}

func ratioOf(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// fmtMB shows KiB as MB (10^6 bytes), the unit the targets are given in.
func fmtMB(kib int64) string { return fmt.Sprintf("%.1f MB", mb(kib)) }

func mb(kib int64) float64 { return float64(kib) * 1024 / 1e6 }

func us(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }

// csvTables are the files' contents, one row per point (the rounds file: per round).
func csvTables(res *results) map[string][][]string {
	point := func(p pointRow, base pointRow) []string {
		return []string{p.Phase, p.Side, strconv.Itoa(p.Instances), strconv.Itoa(p.Concurrency), p.Pool, strconv.Itoa(p.Addrs),
			strconv.Itoa(p.Util), strconv.Itoa(p.Used), strconv.FormatInt(p.Ops, 10), fmt.Sprintf("%.1f", p.Rate), us(p.P50), us(p.P99), us(p.Max),
			strconv.FormatInt(p.Errors, 10), strconv.FormatInt(p.Dups, 10),
			ratioOf(p.Rate, base.Rate), ratioOf(p.P50.Seconds(), base.P50.Seconds())}
	}
	head := []string{"phase", "side", "instances", "concurrency", "pool", "addresses", "util_pct", "used", "ops", "rate_per_s",
		"p50_us", "p99_us", "max_us", "errors", "duplicates", "rate_vs_baseline", "p50_vs_baseline"}
	t := map[string][][]string{}
	add := func(file string, rows []pointRow) {
		if len(rows) == 0 {
			return
		}
		t[file] = [][]string{head}
		for _, p := range rows {
			t[file] = append(t[file], point(p, baselineOf(rows, p)))
		}
	}
	add("throughput.csv", res.Throughput)
	add("latency.csv", res.Latency)
	var other []pointRow
	for _, p := range []*pointRow{res.Exhausted, res.Floor} {
		if p != nil {
			other = append(other, *p)
		}
	}
	add("exhausted.csv", other)
	if len(res.Rounds) > 0 {
		t["rounds.csv"] = [][]string{append([]string{"round", "seconds"}, head[:15]...)}
		for _, r := range res.Rounds {
			t["rounds.csv"] = append(t["rounds.csv"], append([]string{strconv.Itoa(r.Round), fmt.Sprintf("%.3f", r.Elapsed.Seconds())},
				point(r.pointRow, pointRow{})[:15]...))
		}
	}
	if len(res.InitRange) > 0 {
		t["initrange.csv"] = [][]string{{"pool", "addresses", "round", "ipamctl_s", "ipamctl_peak_rss_kib", "baseline_s", "ratio"}}
		for _, i := range res.InitRange {
			t["initrange.csv"] = append(t["initrange.csv"], []string{i.Pool, strconv.Itoa(i.Addrs), strconv.Itoa(i.Round),
				fmt.Sprintf("%.3f", i.Ours.Seconds()), strconv.FormatInt(i.MaxRSSKiB, 10), fmt.Sprintf("%.3f", i.Baseline.Seconds()),
				ratioOf(i.Ours.Seconds(), i.Baseline.Seconds())})
		}
	}
	if len(res.Mem) > 0 {
		t["memory.csv"] = [][]string{{"when", "daemon", "vmrss_kib", "vmhwm_kib"}}
		for _, m := range res.Mem {
			t["memory.csv"] = append(t["memory.csv"], []string{m.When, m.Daemon, strconv.FormatInt(m.Mem.RSS, 10), strconv.FormatInt(m.Mem.HWM, 10)})
		}
	}
	if f := res.Fifty; f != nil {
		t["fifty.csv"] = fiftyCSV(f)
	}
	t["targets.csv"] = [][]string{{"target", "ours", "reference", "ratio", "limit", "result"}}
	for _, x := range res.Targets {
		t["targets.csv"] = append(t["targets.csv"], []string{x.Name, x.Ours, x.Reference, x.Ratio, x.Limit, x.Result})
	}
	return t
}

// memGroups splits memory rows by checkpoint, in order.
func memGroups(rows []memRow) [][]memRow {
	var gs [][]memRow
	for i, m := range rows {
		if i == 0 || m.When != rows[i-1].When {
			gs = append(gs, nil)
		}
		gs[len(gs)-1] = append(gs[len(gs)-1], m)
	}
	return gs
}

func sum[T int64 | time.Duration](v []T) T {
	var s T
	for _, x := range v {
		s += x
	}
	return s
}

// printFifty is the fifty-host phase's table: per side the median over rounds, [min-max].
func printFifty(w io.Writer, f *fiftyResult) {
	fmt.Fprintf(w, "\nFIFTY HOSTS: %d daemons sharing pool %s through %s one-way links; %d allocations spread over them at concurrency %d, then their releases; %d round(s) per side, median [min-max]\n",
		f.Hosts, f.Pool, f.Latency, f.Burst, f.Conc, len(f.Rounds)/2)
	fu := f.FirstUse
	fmt.Fprintf(w, "first use (each host's first allocation, all at once): p50 %s p99 %s max %s, errors %d; etcd CPU %s, %s from etcd\n",
		fmtDur(quantile(fu.Lat, .5)), fmtDur(quantile(fu.Lat, .99)), fmtDur(quantile(fu.Lat, 1)), fu.Errors, f.FirstUseCost.EtcdCPU, fmtBytes(f.FirstUseCost.FromEtcd))
	if id := f.Idle; id.Took > 0 {
		perS := func(n int64) string { return fmtBytes(int64(float64(n)/id.Took.Seconds())) + "/s" }
		fmt.Fprintf(w, "idle %s: etcd CPU %s (%.2f%% of a core), daemons CPU %s; etcd to daemons %s (%s per host), daemons to etcd %s\n",
			id.Took.Round(time.Millisecond), id.EtcdCPU, 100*id.EtcdCPU.Seconds()/id.Took.Seconds(), id.DaemonCPU,
			perS(id.FromEtcd), perS(id.FromEtcd/int64(max(f.Hosts, 1))), perS(id.ToEtcd))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SIDE\tALLOCATE ALL\tALLOCATION P99\tRELEASE ALL\tRELEASE P99\tSETTLED AFTER\tETCD CPU\tDAEMONS CPU\tIPAMBENCH CPU\tFROM ETCD\tTO ETCD\tERRORS\tDUPLICATES\n")
	meds := map[string][]float64{}
	for _, side := range []string{"ours", "baseline"} {
		var col [10][]float64
		var errs, dups int64
		for _, fr := range f.Rounds {
			if fr.Side != side {
				continue
			}
			for i, v := range []float64{fr.Alloc.Elapsed.Seconds(), quantile(fr.Alloc.Lat, .99).Seconds(), fr.Release.Elapsed.Seconds(),
				quantile(fr.Release.Lat, .99).Seconds(), fr.Settle.Seconds(), fr.EtcdCPU.Seconds(), fr.DaemonCPU.Seconds(), fr.SelfCPU.Seconds(),
				float64(fr.FromEtcd), float64(fr.ToEtcd)} {
				col[i] = append(col[i], v)
			}
			errs += fr.Alloc.Errors + fr.Release.Errors
			dups += fr.Alloc.Dups + fr.Release.Dups
		}
		if len(col[0]) == 0 {
			continue
		}
		fmt.Fprintf(tw, "%s", side)
		for i, c := range col {
			format := func(v float64) string {
				if v == 0 {
					return "0" // fmtDur's "-" would read as a range's dash
				}
				return fmtDur(time.Duration(v * float64(time.Second)))
			}
			if i >= 8 {
				format = func(v float64) string { return fmtBytes(int64(v)) }
			}
			meds[side] = append(meds[side], median(c))
			fmt.Fprintf(tw, "\t%s", spread(c, format))
		}
		fmt.Fprintf(tw, "\t%d\t%d\n", errs, dups)
	}
	if o, b := meds["ours"], meds["baseline"]; len(o) > 0 && len(b) > 0 {
		fmt.Fprintf(tw, "ours/baseline")
		for i := range o {
			fmt.Fprintf(tw, "\t%s", ratioOf(o[i], b[i]))
		}
		fmt.Fprintf(tw, "\t\t\n")
	}
	tw.Flush()
}

// spread is the median of v and, over more than one value, its range.
func spread(v []float64, format func(float64) string) string {
	if len(v) == 1 {
		return format(v[0])
	}
	return fmt.Sprintf("%s [%s-%s]", format(median(v)), format(slices.Min(v)), format(slices.Max(v)))
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// fiftyCSV is one row per round and side, then the first use and the idle window.
func fiftyCSV(f *fiftyResult) [][]string {
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	row := func(side, round string, alloc, release roundResult, u usage) []string {
		return []string{side, round, strconv.Itoa(f.Hosts), us(f.Latency), strconv.Itoa(f.Conc), strconv.FormatInt(alloc.Ops, 10),
			fmt.Sprintf("%.3f", alloc.Elapsed.Seconds()), us(quantile(alloc.Lat, .5)), us(quantile(alloc.Lat, .99)), us(quantile(alloc.Lat, 1)),
			fmt.Sprintf("%.3f", release.Elapsed.Seconds()), us(quantile(release.Lat, .5)), us(quantile(release.Lat, .99)),
			fmt.Sprintf("%.3f", u.Took.Seconds()), ms(u.Settle), ms(u.EtcdCPU), ms(u.DaemonCPU), ms(u.SelfCPU),
			strconv.FormatInt(u.FromEtcd, 10), strconv.FormatInt(u.ToEtcd, 10),
			strconv.FormatInt(alloc.Errors+release.Errors, 10), strconv.FormatInt(alloc.Dups+release.Dups, 10)}
	}
	t := [][]string{{"side", "round", "hosts", "latency_us", "concurrency", "allocations", "alloc_s", "alloc_p50_us", "alloc_p99_us", "alloc_max_us",
		"release_s", "release_p50_us", "release_p99_us", "window_s", "settle_ms", "etcd_cpu_ms", "daemons_cpu_ms", "ipambench_cpu_ms",
		"from_etcd_bytes", "to_etcd_bytes", "errors", "duplicates"}}
	for _, fr := range f.Rounds {
		t = append(t, row(fr.Side, strconv.Itoa(fr.Round), fr.Alloc, fr.Release, fr.usage))
	}
	t = append(t, row("first-use", "", f.FirstUse, roundResult{}, f.FirstUseCost), row("idle", "", roundResult{}, roundResult{}, f.Idle))
	return t
}
