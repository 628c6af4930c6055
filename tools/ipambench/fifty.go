package main

// The fifty-host phase (issue 19): what a LAN of Docker hosts sharing one pool costs etcd and
// each host. -instances daemons (default 50), each its own host, reach a 3-member etcd through
// latency links (internal/latency: a fixed one-way delay each way, -latency); so does the
// baseline's client, through links of its own, so that each side's bytes are counted apart.
// ipambench's own client (seeding, counts) goes direct: it is not measured.
//
// Measured, in this order:
//   - first use: one allocation on each daemon at once, which loads its copy of the pool;
//   - an idle window (-idle): etcd's CPU and what it sends the daemons while nothing is asked
//     (lease keep-alives, the lastseen writes and their watch events);
//   - -rounds rounds, ours then the baseline: a burst of -burst allocations spread over the
//     hosts at -burst-concurrency, then their releases; wall time and p99 of each, and the CPU
//     and link bytes from the burst's start until the links are quiet again (the daemons'
//     watches have caught up). Every round checks that no address was granted twice, that all
//     were released, and that etcd's counts of the pool are back to its size.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/latency"
)

const (
	// quietBytes in quietWindow from etcd means the watches have caught up: a claim's or a
	// release's event alone is some 100 bytes to each of the daemons, keep-alives a few dozen.
	quietBytes  = 2 << 10
	quietWindow = 50 * time.Millisecond
	quietMax    = 10 * time.Second
)

// fiftyResult is the phase's figures.
type fiftyResult struct {
	Hosts, Burst, Conc int
	Latency            time.Duration
	Pool               string
	FirstUse           roundResult // each daemon's first allocation, all at once
	FirstUseCost       usage
	Idle               usage
	Rounds             []fiftyRound
}

type fiftyRound struct {
	Side           string
	Round          int
	Alloc, Release roundResult
	usage
}

// usage is what a stretch of time cost: CPU of etcd (all members), of the daemons and of
// ipambench itself (its links included), and the bytes through one side's links. Settle is how
// long the links took to go quiet after the last answer.
type usage struct {
	Took, Settle                time.Duration
	EtcdCPU, DaemonCPU, SelfCPU time.Duration
	FromEtcd, ToEtcd            int64
	at                          time.Time
}

// startLinks puts a latency link in front of every etcd member for the daemons and another for
// the baseline, dials the baseline's client through its links, and returns the daemons' etcd
// endpoints.
func (r *runner) startLinks() ([]string, error) {
	var ours, base []string
	for _, ep := range r.endpoints {
		target := ep[len("http://"):] // ipambench's own etcd speaks http
		for _, side := range []*[]*latency.Proxy{&r.links, &r.baseLinks} {
			p, err := latency.Listen(target, r.cfg.Latency)
			if err != nil {
				return nil, err
			}
			*side = append(*side, p)
		}
		ours = append(ours, "http://"+r.links[len(r.links)-1].Addr())
		base = append(base, "http://"+r.baseLinks[len(r.baseLinks)-1].Addr())
	}
	cli, err := etcdstore.Dial(etcdstore.Config{Endpoints: base, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting the baseline to etcd through %s: %w", base, err)
	}
	r.baseCli = cli
	r.logf("latency links: %s one way, %d for the daemons, %d for the baseline", r.cfg.Latency, len(r.links), len(r.baseLinks))
	return ours, nil
}

// usageNow reads the counters of usage as totals so far; since makes them a window.
func (r *runner) usageNow(links []*latency.Proxy) (usage, error) {
	u := usage{at: time.Now()}
	var etcd, daemons []int
	for i := range r.etcd.Members {
		etcd = append(etcd, r.etcd.Proc(i).Pid())
	}
	for _, d := range r.daemons {
		daemons = append(daemons, d.proc.Pid())
	}
	var err error
	if u.EtcdCPU, err = cpuTimes(etcd); err != nil {
		return u, fmt.Errorf("etcd's CPU time: %w", err)
	}
	if u.DaemonCPU, err = cpuTimes(daemons); err != nil {
		return u, fmt.Errorf("the daemons' CPU time: %w", err)
	}
	if u.SelfCPU, err = cpuTime(os.Getpid()); err != nil {
		return u, err
	}
	for _, l := range links {
		to, from := l.Bytes()
		u.ToEtcd, u.FromEtcd = u.ToEtcd+to, u.FromEtcd+from
	}
	return u, nil
}

func (u usage) since(b usage) usage {
	return usage{Took: u.at.Sub(b.at), Settle: u.Settle, EtcdCPU: u.EtcdCPU - b.EtcdCPU, DaemonCPU: u.DaemonCPU - b.DaemonCPU,
		SelfCPU: u.SelfCPU - b.SelfCPU, FromEtcd: u.FromEtcd - b.FromEtcd, ToEtcd: u.ToEtcd - b.ToEtcd, at: u.at}
}

// settle waits until links carry less than quietBytes from etcd in quietWindow (at most
// quietMax) and returns the usage since before, with Settle the wait.
func (r *runner) settle(ctx context.Context, links []*latency.Proxy, before usage) (usage, error) {
	start := time.Now()
	fromEtcd := func() (n int64) {
		for _, l := range links {
			_, from := l.Bytes()
			n += from
		}
		return n
	}
	last := fromEtcd()
	for time.Since(start) < quietMax && ctx.Err() == nil {
		time.Sleep(quietWindow)
		n := fromEtcd()
		if n-last < quietBytes {
			break
		}
		last = n
	}
	now, err := r.usageNow(links)
	if err != nil {
		return usage{}, err
	}
	now.Settle = time.Since(start)
	return now.since(before), nil
}

// burst runs op(i) for every i in [0, n) from conc goroutines, each once, and times each call
// and the whole: a round of a count of requests, where measure's is a time.
func burst(ctx context.Context, n, conc int, op func(ctx context.Context, i int) (time.Duration, bool, error)) roundResult {
	var (
		res  roundResult
		mu   sync.Mutex
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range min(conc, n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				lat, dup, err := op(ctx, i)
				mu.Lock()
				if err != nil {
					res.Errors++
					if res.FirstErr == "" {
						res.FirstErr = err.Error()
					}
				} else {
					res.Ops++
					res.Lat = append(res.Lat, lat)
				}
				if dup {
					res.Dups++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.Lat)
	return res
}

// fifty runs the phase.
func (r *runner) fifty(ctx context.Context) error {
	p, err := r.pool(ctx, r.cfg.FiftyPool)
	if err != nil {
		return err
	}
	// Seeded direct, as setup; its claims and releases cross links as the daemons' do.
	p.base.cli = r.baseCli
	res := &fiftyResult{Hosts: len(r.daemons), Burst: r.cfg.Burst, Conc: r.cfg.BurstConc, Latency: r.cfg.Latency, Pool: p.spec.name}
	r.res.Fifty = res
	start := time.Now()
	for i := range r.daemons {
		if err := r.attach(ctx, p, i); err != nil {
			return err
		}
	}
	r.logf("fifty: %d hosts attached to pool %s (%d addresses) in %s", len(r.daemons), p.spec.name, p.size, time.Since(start).Round(time.Millisecond))

	first, err := r.oursBurst(ctx, p, len(r.daemons))
	if err != nil {
		return fmt.Errorf("first use: %w", err)
	}
	res.FirstUse, res.FirstUseCost = first.Alloc, first.usage
	r.res.addRound("fifty-first-use", "ours", len(r.daemons), r.cfg.BurstConc, p, 0, 1, first.Alloc)
	r.logf("  first use (each host's first allocation, loading its copy): p50 %s p99 %s max %s%s", fmtDur(quantile(first.Alloc.Lat, .5)),
		fmtDur(quantile(first.Alloc.Lat, .99)), fmtDur(quantile(first.Alloc.Lat, 1)), errNote(summarize([]roundResult{first.Alloc})))
	if err := r.memCheckpoint("fifty: after first use"); err != nil {
		return err
	}

	before, err := r.usageNow(r.links)
	if err != nil {
		return err
	}
	select {
	case <-time.After(r.cfg.Idle):
	case <-ctx.Done():
		return ctx.Err()
	}
	after, err := r.usageNow(r.links)
	if err != nil {
		return err
	}
	res.Idle = after.since(before)
	r.logf("  idle %s: etcd CPU %s, daemons CPU %s, etcd→daemons %d bytes, daemons→etcd %d bytes", res.Idle.Took.Round(time.Millisecond),
		res.Idle.EtcdCPU, res.Idle.DaemonCPU, res.Idle.FromEtcd, res.Idle.ToEtcd)

	r.logf("  %d round(s): %d allocations over %d hosts at concurrency %d, then their releases; ours, then the baseline",
		r.cfg.Rounds, r.cfg.Burst, len(r.daemons), r.cfg.BurstConc)
	for round := 1; round <= r.cfg.Rounds; round++ {
		ours, err := r.oursBurst(ctx, p, r.cfg.Burst)
		if err != nil {
			return fmt.Errorf("round %d, ours: %w", round, err)
		}
		base, err := r.baseBurst(ctx, p, r.cfg.Burst)
		if err != nil {
			return fmt.Errorf("round %d, baseline: %w", round, err)
		}
		for _, fr := range []*fiftyRound{&ours, &base} {
			fr.Round = round
			res.Rounds = append(res.Rounds, *fr)
			n := map[string]int{"ours": len(r.daemons), "baseline": 0}[fr.Side]
			r.res.addRound("fifty-alloc", fr.Side, n, r.cfg.BurstConc, p, 0, round, fr.Alloc)
			r.res.addRound("fifty-release", fr.Side, n, r.cfg.BurstConc, p, 0, round, fr.Release)
			r.logf("  round %d %-8s: allocate %s (p99 %s), release %s (p99 %s), settled %s; etcd CPU %s, daemons %s, etcd→clients %.1f MB%s",
				round, fr.Side, fmtDur(fr.Alloc.Elapsed), fmtDur(quantile(fr.Alloc.Lat, .99)), fmtDur(fr.Release.Elapsed),
				fmtDur(quantile(fr.Release.Lat, .99)), fmtDur(fr.Settle), fr.EtcdCPU, fr.DaemonCPU, float64(fr.FromEtcd)/1e6,
				errNote(summarize([]roundResult{fr.Alloc}), summarize([]roundResult{fr.Release})))
		}
		if err := r.alive(); err != nil {
			return err
		}
	}
	return r.memCheckpoint("fifty: end")
}

// oursBurst allocates n addresses, request i on daemon i mod hosts, then releases each through
// the daemon that granted it (its host's dockerd does), and checks that all came back.
func (r *runner) oursBurst(ctx context.Context, p *benchPool, n int) (fiftyRound, error) {
	fr := fiftyRound{Side: "ours"}
	l := &oursLoad{r: r, p: p, daemons: r.daemons, held: p.held}
	type grant struct {
		d  *daemon
		a  netip.Addr
		id uint64
	}
	grants := make([]grant, n)
	before, err := r.usageNow(r.links)
	if err != nil {
		return fr, err
	}
	fr.Alloc = burst(ctx, n, r.cfg.BurstConc, func(ctx context.Context, i int) (time.Duration, bool, error) {
		d := r.daemons[i%len(r.daemons)]
		id := r.macs.Add(1)
		a, lat, dup, err := l.take(ctx, d, id)
		if err == nil {
			grants[i] = grant{d: d, a: a, id: id}
		}
		return lat, dup, err
	})
	grants = slices.DeleteFunc(grants, func(g grant) bool { return g.d == nil }) // failed: nothing to give back
	fr.Release = burst(ctx, len(grants), r.cfg.BurstConc, func(ctx context.Context, i int) (time.Duration, bool, error) {
		g := grants[i]
		start := time.Now()
		err := l.give(ctx, g.d, g.a, g.id)
		return time.Since(start), false, err
	})
	if fr.usage, err = r.settle(ctx, r.links, before); err != nil {
		return fr, err
	}
	if left := p.held.len(); left > 0 {
		return fr, fmt.Errorf("%d addresses not released (%d release errors: %s)", left, fr.Release.Errors, fr.Release.FirstErr)
	}
	return fr, r.checkCounts(ctx, p)
}

// baseBurst is oursBurst's baseline: n bare claims of distinct free addresses at the same
// concurrency through the baseline's links, then their releases.
func (r *runner) baseBurst(ctx context.Context, p *benchPool, n int) (fiftyRound, error) {
	fr := fiftyRound{Side: "baseline"}
	free := p.base.perm[p.base.used:][:n]
	claimed := make([]bool, n)
	before, err := r.usageNow(r.baseLinks)
	if err != nil {
		return fr, err
	}
	fr.Alloc = burst(ctx, n, r.cfg.BurstConc, func(ctx context.Context, i int) (time.Duration, bool, error) {
		start := time.Now()
		err := p.base.claim(ctx, free[i])
		claimed[i] = err == nil
		return time.Since(start), false, err
	})
	var back []int32
	for i, ok := range claimed {
		if ok {
			back = append(back, free[i])
		}
	}
	fr.Release = burst(ctx, len(back), r.cfg.BurstConc, func(ctx context.Context, i int) (time.Duration, bool, error) {
		start := time.Now()
		err := p.base.release(ctx, back[i])
		return time.Since(start), false, err
	})
	if fr.usage, err = r.settle(ctx, r.baseLinks, before); err != nil {
		return fr, err
	}
	return fr, r.checkBaseCounts(ctx, p)
}

// checkBaseCounts: the baseline's free and used keys are what the pool's twin should hold.
func (r *runner) checkBaseCounts(ctx context.Context, p *benchPool) error {
	for _, c := range []struct {
		prefix string
		want   int
	}{{p.base.prefix + "free/", p.base.size - p.base.used}, {p.base.prefix + "used/", p.base.used}} {
		cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		g, err := r.cli.Get(cctx, c.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err != nil {
			return fmt.Errorf("counting the baseline's %s: %w", c.prefix, err)
		}
		if int(g.Count) != c.want {
			return fmt.Errorf("the baseline's %s holds %d keys, want %d", c.prefix, g.Count, c.want)
		}
	}
	return nil
}
