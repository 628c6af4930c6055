package main

import (
	"fmt"
	"time"
)

// target is one line of issue 5's targets: our figure, what it is compared with, and the verdict.
// Result is PASS or MISS against Limit, "report" for figures without a limit, and "n/a" when the
// run did not measure it (a -phases or -sizes selection, the -quick pools).
type target struct {
	Name, Ours, Reference, Ratio, Limit, Result string
}

// Issue 5's limits.
const (
	limitThroughput   = 0.90 // ours with all instances at concurrency 64, × the baseline's rate
	limitSerialP50    = 1.20 // serial p50, × the baseline's
	limitScaleP50     = 1.20 // p50 of the largest, fullest pool, × that of the smallest, emptiest
	limitExhausted    = 2 * time.Millisecond
	limitDaemonRSSMB  = 64.0
	limitIpamctlRSSMB = 200.0
	targetConcurrency = 64
)

// initLimits are init-range's time limits by pool.
var initLimits = map[string]time.Duration{"64k": 3 * time.Second, "1M": 60 * time.Second}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func targets(res *results, instances int) []target {
	var ts []target
	na := func(name, limit string) {
		ts = append(ts, target{Name: name, Ours: "-", Reference: "-", Ratio: "-", Limit: limit, Result: "n/a"})
	}

	// Throughput at concurrency 64.
	ns := []int{instances}
	if instances > 1 {
		ns = append(ns, 1) // for comparison only
	}
	for i, n := range ns {
		name := fmt.Sprintf("throughput, %s, concurrency %d", instancesName(n), targetConcurrency)
		limit := fmt.Sprintf(">= %.2f x baseline rate", limitThroughput)
		if i > 0 {
			limit = "report"
		}
		p, ok := find(res.Throughput, "ours", n, targetConcurrency, -1, "")
		b, okb := find(res.Throughput, "baseline", 0, targetConcurrency, -1, "")
		if !ok || !okb {
			na(name, limit)
			continue
		}
		ratio := p.Rate / b.Rate
		result := verdict(ratio >= limitThroughput)
		if i > 0 {
			result = "report"
		}
		ts = append(ts, target{Name: name + ", pool " + p.Pool, Ours: fmt.Sprintf("%.0f/s", p.Rate), Reference: fmt.Sprintf("baseline %.0f/s", b.Rate),
			Ratio: fmt.Sprintf("%.2f", ratio), Limit: limit, Result: result})
	}

	// Serial p50: the latency sweep's emptiest point of the throughput pool, else that pool's
	// concurrency 1.
	serial := func() (pointRow, pointRow, bool) {
		for _, rows := range [][]pointRow{res.Latency, res.Throughput} {
			for _, p := range rows {
				if p.Side == "ours" && p.Instances == 1 && p.Concurrency == 1 && p.Util == 0 && p.Pool == res.Pool {
					if b, ok := find(rows, "baseline", 0, 1, 0, p.Pool); ok {
						return p, b, true
					}
				}
			}
		}
		return pointRow{}, pointRow{}, false
	}
	if p, b, ok := serial(); ok {
		ratio := p.P50.Seconds() / b.P50.Seconds()
		ts = append(ts, target{Name: fmt.Sprintf("serial allocation p50, pool %s at 0%%", p.Pool), Ours: fmtDur(p.P50),
			Reference: "baseline " + fmtDur(b.P50), Ratio: fmt.Sprintf("%.2f", ratio),
			Limit: fmt.Sprintf("<= %.2f x baseline", limitSerialP50), Result: verdict(ratio <= limitSerialP50)})
	} else {
		na("serial allocation p50", fmt.Sprintf("<= %.2f x baseline", limitSerialP50))
	}

	// Scaling: the largest pool at its highest utilisation against the smallest at 0 %.
	if len(res.Latency) > 0 {
		small, large := res.Latency[0], res.Latency[0]
		for _, p := range res.Latency {
			if p.Addrs < small.Addrs || p.Addrs == small.Addrs && p.Util < small.Util {
				small = p
			}
			if p.Addrs > large.Addrs || p.Addrs == large.Addrs && p.Util > large.Util {
				large = p
			}
		}
		p50 := map[string][2]time.Duration{} // side → small, large
		for _, side := range []string{"ours", "baseline"} {
			s, _ := find(res.Latency, side, -1, 1, small.Util, small.Pool)
			l, _ := find(res.Latency, side, -1, 1, large.Util, large.Pool)
			p50[side] = [2]time.Duration{s.P50, l.P50}
			ratio := l.P50.Seconds() / s.P50.Seconds()
			limit, result := fmt.Sprintf("<= %.2f", limitScaleP50), verdict(ratio <= limitScaleP50)
			if side == "baseline" {
				limit, result = "report", "report"
			}
			ts = append(ts, target{Name: fmt.Sprintf("%s: p50 at %s/%d%% vs %s/%d%%", side, large.Pool, large.Util, small.Pool, small.Util),
				Ours: fmtDur(l.P50), Reference: fmtDur(s.P50), Ratio: fmt.Sprintf("%.2f", ratio), Limit: limit, Result: result})
		}
		// etcd itself slows down as its key space grows (the baseline's row above); what is
		// ours is the ratio to the baseline at the same point, which must not grow either.
		o, b := p50["ours"], p50["baseline"]
		atSmall, atLarge := o[0].Seconds()/b[0].Seconds(), o[1].Seconds()/b[1].Seconds()
		ratio := atLarge / atSmall
		ts = append(ts, target{Name: fmt.Sprintf("ours/baseline at %s/%d%% vs at %s/%d%%", large.Pool, large.Util, small.Pool, small.Util),
			Ours: fmt.Sprintf("%.2f", atLarge), Reference: fmt.Sprintf("%.2f", atSmall), Ratio: fmt.Sprintf("%.2f", ratio),
			Limit: fmt.Sprintf("<= %.2f", limitScaleP50), Result: verdict(ratio <= limitScaleP50)})
	} else {
		na("p50 at the largest, fullest pool vs the smallest, emptiest", fmt.Sprintf("<= %.2f", limitScaleP50))
	}

	// The exhausted pool's answer.
	if e := res.Exhausted; e != nil {
		ts = append(ts, target{Name: fmt.Sprintf("\"no free address\" p50, pool %s full", e.Pool), Ours: fmtDur(e.P50),
			Reference: fmt.Sprintf("p99 %s, max %s", fmtDur(e.P99), fmtDur(e.Max)), Ratio: "-",
			Limit: "<= " + fmtDur(limitExhausted), Result: verdict(e.P50 <= limitExhausted && e.Ops > 0 && e.Errors == 0)})
	} else {
		na("\"no free address\" p50", "<= "+fmtDur(limitExhausted))
	}

	if f := res.Floor; f != nil {
		ts = append(ts, target{Name: "plugin call without etcd work (GetDefaultAddressSpaces) p50", Ours: fmtDur(f.P50),
			Reference: "p99 " + fmtDur(f.P99), Ratio: "-", Limit: "report", Result: "report"})
	}

	// init-range: the median of its rounds per pool, and ipamctl's peak memory.
	byPool := map[string][]initRow{}
	var order []string
	for _, i := range res.InitRange {
		if byPool[i.Pool] == nil {
			order = append(order, i.Pool)
		}
		byPool[i.Pool] = append(byPool[i.Pool], i)
	}
	for _, name := range order {
		rows := byPool[name]
		var ours, base []time.Duration
		var rss []int64
		for _, i := range rows {
			ours, base, rss = append(ours, i.Ours), append(base, i.Baseline), append(rss, i.MaxRSSKiB)
		}
		o, b, m := median(ours), median(base), median(rss)
		t := target{Name: fmt.Sprintf("ipamctl init-range, pool %s (%d addresses, median of %d)", name, rows[0].Addrs, len(rows)),
			Ours: fmtDur(o), Reference: "bare puts " + fmtDur(b), Ratio: ratioOf(o.Seconds(), b.Seconds()), Limit: "report", Result: "report"}
		if l, ok := initLimits[name]; ok {
			t.Limit, t.Result = "<= "+fmtDur(l), verdict(o <= l)
		}
		ts = append(ts, t)
		t = target{Name: fmt.Sprintf("ipamctl init-range peak RSS, pool %s", name), Ours: fmtMB(m), Reference: "-", Ratio: "-", Limit: "report", Result: "report"}
		if name == "1M" {
			t.Limit, t.Result = fmt.Sprintf("<= %.0f MB", limitIpamctlRSSMB), verdict(mb(m) <= limitIpamctlRSSMB)
		}
		ts = append(ts, t)
	}
	if len(order) == 0 {
		na("ipamctl init-range", "report")
	}

	// Daemon memory: with the throughput pool full, and at the end of the run.
	full, end := false, false
	for _, m := range res.Mem {
		if m.Daemon != "bench1" {
			continue
		}
		switch {
		case len(m.When) > 5 && m.When[len(m.When)-5:] == " full":
			t := target{Name: "daemon VmRSS, " + m.When, Ours: fmtMB(m.Mem.RSS), Reference: "VmHWM " + fmtMB(m.Mem.HWM), Ratio: "-",
				Limit: "report", Result: "report"}
			if m.When == "pool 64k full" {
				t.Limit, t.Result = fmt.Sprintf("<= %.0f MB", limitDaemonRSSMB), verdict(mb(m.Mem.RSS) <= limitDaemonRSSMB)
			}
			ts, full = append(ts, t), true
		case m.When == "end":
			ts, end = append(ts, target{Name: "daemon VmRSS at the end (every pool of the run in use)", Ours: fmtMB(m.Mem.RSS),
				Reference: "VmHWM " + fmtMB(m.Mem.HWM), Ratio: "-", Limit: "report", Result: "report"}), true
		}
	}
	if !full {
		na("daemon VmRSS, /16 full", fmt.Sprintf("<= %.0f MB", limitDaemonRSSMB))
	}
	if !end {
		na("daemon VmRSS at the end", "report")
	}

	ts = append(ts, target{Name: "errors / duplicates, all rounds", Ours: fmt.Sprintf("%d / %d", res.Errors, res.Duplicates),
		Reference: "-", Ratio: "-", Limit: "0 / 0", Result: verdict(res.Errors == 0 && res.Duplicates == 0)})
	return ts
}

// find returns the point of side with instances (-1: any), concurrency, util (-1: any) and
// pool ("": any).
func find(rows []pointRow, side string, instances, c, util int, pool string) (pointRow, bool) {
	for _, p := range rows {
		if p.Side == side && (instances < 0 || p.Instances == instances) && p.Concurrency == c &&
			(util < 0 || p.Util == util) && (pool == "" || p.Pool == pool) {
			return p, true
		}
	}
	return pointRow{}, false
}
