package main

import (
	"context"
	"fmt"
	"time"
)

// phases runs the sweeps in an order that keeps each figure clean: the throughput pool is
// finished (filled completely, daemon RSS, exhausted answers) before any larger pool exists,
// so that the /16 RSS figure holds no trace of the 1M pool.
func (r *runner) phases(ctx context.Context) error {
	ph := r.cfg.Phases
	if ph["fifty"] {
		return r.fifty(ctx) // alone (parseFlags)
	}
	var main *benchPool
	if ph["throughput"] || ph["rss"] || ph["exhausted"] || ph["initrange"] {
		var err error
		if main, err = r.pool(ctx, r.cfg.Pool); err != nil {
			return err
		}
	}
	if ph["throughput"] {
		if err := r.throughput(ctx, main); err != nil {
			return err
		}
	}
	finished := main == nil || !(ph["rss"] || ph["exhausted"])
	finish := func() error {
		if finished {
			return nil
		}
		finished = true
		return r.finish(ctx, main)
	}
	if ph["latency"] || ph["initrange"] {
		for _, name := range r.cfg.Sizes {
			if poolSizes[name].size() > main.sizeOr(0) {
				if err := finish(); err != nil {
					return err
				}
			}
			p, err := r.pool(ctx, name)
			if err != nil {
				return err
			}
			if ph["latency"] {
				if err := r.latency(ctx, p); err != nil {
					return err
				}
			}
			if p == main {
				if err := finish(); err != nil {
					return err
				}
			}
		}
	}
	if err := finish(); err != nil {
		return err
	}
	if ph["mempools"] {
		if err := r.memPools(ctx); err != nil {
			return err
		}
	}
	return r.memCheckpoint("end")
}

func (p *benchPool) sizeOr(def int) int {
	if p == nil {
		return def
	}
	return p.size
}

// throughput: cycles per second against concurrency, ours with one daemon and with all, and
// the baseline, alternating round by round.
func (r *runner) throughput(ctx context.Context, p *benchPool) error {
	for i := range r.daemons {
		if err := r.attach(ctx, p, i); err != nil {
			return err
		}
	}
	sides := []struct {
		name      string
		instances int
	}{{"baseline", 0}, {"ours", 1}}
	if len(r.daemons) > 1 {
		sides = append(sides, struct {
			name      string
			instances int
		}{"ours", len(r.daemons)})
	}
	r.logf("throughput: pool %s, concurrency %v, %d round(s) of %s per side", p.spec.name, r.cfg.Concurrency, r.cfg.Rounds, r.cfg.RoundTime)
	for _, c := range r.cfg.Concurrency {
		rounds := make([][]roundResult, len(sides))
		for round := 1; round <= r.cfg.Rounds; round++ {
			for i, s := range sides {
				res := r.measureSide(ctx, p, s.instances, c, r.cfg.RoundTime, cycle)
				rounds[i] = append(rounds[i], res)
				r.res.addRound("throughput", s.name, s.instances, c, p, 0, round, res)
				r.debugf("  c=%d round %d %s/%d: %.0f/s p50 %s errors %d", c, round, s.name, s.instances,
					float64(res.Ops)/res.Elapsed.Seconds(), quantile(res.Lat, .5), res.Errors)
			}
			if err := r.alive(); err != nil {
				return err
			}
		}
		line := fmt.Sprintf("  concurrency %3d:", c)
		for i, s := range sides {
			st := summarize(rounds[i])
			r.res.Throughput = append(r.res.Throughput, pointRow{Phase: "throughput", Side: s.name, Instances: s.instances,
				Concurrency: c, Pool: p.spec.name, Addrs: p.size, stats: st})
			line += fmt.Sprintf("  %s/%d %6.0f/s p50 %6s", s.name, s.instances, st.Rate, fmtDur(st.P50))
			if st.Errors > 0 {
				line += fmt.Sprintf(" (%d errors: %s)", st.Errors, st.FirstErr)
			}
		}
		r.logf("%s", line)
	}
	return r.compact(ctx)
}

// What a round of ours measures.
type opKind int

const (
	cycle     opKind = iota // RequestAddress + ReleaseAddress
	exhausted               // RequestAddress of a full pool
	floor                   // GetDefaultAddressSpaces
)

// measureSide runs one round: the baseline when instances is 0, else ours on that many daemons.
func (r *runner) measureSide(ctx context.Context, p *benchPool, instances, c int, d time.Duration, kind opKind) roundResult {
	if instances == 0 {
		l := p.base.load(c)
		return measure(ctx, l.workers(), d, l.op)
	}
	l := &oursLoad{r: r, p: p, daemons: r.daemons[:instances], held: p.held}
	switch kind {
	case exhausted:
		return measure(ctx, c, d, l.exhaustedOp)
	case floor:
		return measure(ctx, c, d, l.floorOp)
	}
	return measure(ctx, c, d, l.op)
}

// latency: serial allocation latency of one daemon against pool size and utilisation.
func (r *runner) latency(ctx context.Context, p *benchPool) error {
	if err := r.attach(ctx, p, 0); err != nil {
		return err
	}
	if r.res.Floor == nil {
		var rounds []roundResult
		for round := 1; round <= r.cfg.Rounds; round++ {
			res := r.measureSide(ctx, p, 1, 1, r.cfg.SerialTime, floor)
			rounds = append(rounds, res)
			r.res.addRound("floor", "ours", 1, 1, p, 0, round, res)
		}
		st := summarize(rounds)
		r.res.Floor = &pointRow{Phase: "floor", Side: "ours", Instances: 1, Concurrency: 1, Pool: p.spec.name, Addrs: p.size, stats: st}
		r.logf("  protocol floor (GetDefaultAddressSpaces, no etcd): p50 %s p99 %s%s", fmtDur(st.P50), fmtDur(st.P99), errNote(st))
	}
	for _, u := range r.cfg.Utils {
		if err := r.fill(ctx, p, p.size*u/100); err != nil {
			return err
		}
		var base, ours []roundResult
		for round := 1; round <= r.cfg.Rounds; round++ {
			b := r.measureSide(ctx, p, 0, 1, r.cfg.SerialTime, cycle)
			o := r.measureSide(ctx, p, 1, 1, r.cfg.SerialTime, cycle)
			base, ours = append(base, b), append(ours, o)
			r.res.addRound("latency", "baseline", 0, 1, p, u, round, b)
			r.res.addRound("latency", "ours", 1, 1, p, u, round, o)
			if err := r.alive(); err != nil {
				return err
			}
		}
		bs, os := summarize(base), summarize(ours)
		for _, side := range []struct {
			name string
			n    int
			st   stats
		}{{"baseline", 0, bs}, {"ours", 1, os}} {
			r.res.Latency = append(r.res.Latency, pointRow{Phase: "latency", Side: side.name, Instances: side.n, Concurrency: 1,
				Pool: p.spec.name, Addrs: p.size, Util: u, Used: p.used, stats: side.st})
		}
		r.logf("  latency pool %s at %d%% (%d used): ours p50 %s p99 %s, baseline p50 %s p99 %s%s", p.spec.name, u, p.used,
			fmtDur(os.P50), fmtDur(os.P99), fmtDur(bs.P50), fmtDur(bs.P99), errNote(bs, os))
	}
	return nil
}

// finish fills the throughput pool completely through the first daemon, records the daemons'
// memory, and times the answers of a pool with no free address.
func (r *runner) finish(ctx context.Context, p *benchPool) error {
	r.logf("pool %s: filling it completely through %s", p.spec.name, r.daemons[0].id)
	if err := r.attach(ctx, p, 0); err != nil {
		return err
	}
	if err := r.fill(ctx, p, p.size); err != nil {
		return err
	}
	if r.cfg.Phases["rss"] {
		if err := r.memCheckpoint("pool " + p.spec.name + " full"); err != nil {
			return err
		}
	}
	if !r.cfg.Phases["exhausted"] {
		return nil
	}
	var rounds []roundResult
	for round := 1; round <= r.cfg.Rounds; round++ {
		res := r.measureSide(ctx, p, 1, 1, r.cfg.SerialTime, exhausted)
		rounds = append(rounds, res)
		r.res.addRound("exhausted", "ours", 1, 1, p, 100, round, res)
	}
	st := summarize(rounds)
	r.res.Exhausted = &pointRow{Phase: "exhausted", Side: "ours", Instances: 1, Concurrency: 1, Pool: p.spec.name, Addrs: p.size,
		Util: 100, Used: p.used, stats: st}
	r.logf("  exhausted pool %s: \"no free address\" p50 %s p99 %s max %s%s", p.spec.name, fmtDur(st.P50), fmtDur(st.P99), fmtDur(st.Max), errNote(st))
	return r.alive()
}

func errNote(ss ...stats) string {
	var s string
	for _, st := range ss {
		if st.Errors > 0 || st.Dups > 0 {
			s += fmt.Sprintf(" (%d errors, %d duplicates: %s)", st.Errors, st.Dups, st.FirstErr)
		}
	}
	return s
}
