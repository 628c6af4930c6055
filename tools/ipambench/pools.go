package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go4.org/netipx"

	"github.com/talkingdata/ipam/internal/pluginclient"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
)

// poolSpec is one pool size of the sweeps. Addresses come from 198.18.0.0/15 (RFC 2544's
// benchmarking range) and, for more than that range holds, from 2001:db8::/32 (the IPv6
// documentation prefix). Nothing is ever sent to them: etcd only stores them as key names.
type poolSpec struct {
	name   string
	subnet string
	rng    string // init-range --range
}

var poolSizes = map[string]poolSpec{
	"1k":  {"1k", "198.19.0.0/22", "198.19.0.0/22"},                    // 1,022
	"4k":  {"4k", "2001:db8:1::/64", "2001:db8:1::1-2001:db8:1::1000"}, // 4,096: the smoke run's stand-in for 1M
	"16k": {"16k", "198.19.64.0/18", "198.19.64.0/18"},                 // 16,382: the fifty-host phase's LAN
	"64k": {"64k", "198.18.0.0/16", "198.18.0.0/16"},                   // 65,534
	"1M":  {"1M", "2001:db8::/64", "2001:db8::1-2001:db8::10:0"},       // 1,048,576
}

// hostRange is what init-range seeds: a CIDR range loses the subnet's network and broadcast
// addresses.
func (s poolSpec) hostRange() netipx.IPRange {
	set, err := pool.ParseRanges(s.rng)
	subnet, serr := netip.ParsePrefix(s.subnet)
	if err != nil || serr != nil {
		panic(fmt.Sprintf("pool %s: %v %v", s.name, err, serr)) // the table above is wrong
	}
	var b netipx.IPSetBuilder
	b.AddSet(set)
	b.Intersect(mustSet(pool.HostRange(subnet)))
	set, _ = b.IPSet()
	if len(set.Ranges()) != 1 {
		panic(fmt.Sprintf("pool %s: %s is not one range", s.name, s.rng))
	}
	return set.Ranges()[0]
}

func (s poolSpec) size() int { return int(pool.RangeSize(s.hostRange())) }

func mustSet(r netipx.IPRange) *netipx.IPSet {
	var b netipx.IPSetBuilder
	b.AddRange(r)
	s, _ := b.IPSet()
	return s
}

func sizeNames() string {
	var names []string
	for n := range poolSizes {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// benchPool is a pool of ours, seeded by init-range, with its baseline twin.
type benchPool struct {
	spec     poolSpec
	net      pool.Network
	size     int          // seeded addresses
	used     int          // of ours, as filled by this run
	attached map[int]bool // daemons (by index) that ran RequestPool
	poolID   string
	held     *held // addresses our workers hold now
	order    []int // in-process fills claim range offsets in this order
	base     *baseSpace
}

// initRange runs `ipamctl init-range` under prefix, as an operator would, and returns its wall
// time (process start and etcd connection included) and its peak RSS in KiB.
func (r *runner) initRange(ctx context.Context, prefix string, spec poolSpec) (time.Duration, int64, error) {
	var out bytes.Buffer
	cmd := exec.Command(r.cfg.IpamctlBin, "--etcd-endpoints", strings.Join(r.endpoints, ","), "--etcd-prefix", prefix,
		"--host-id", "ipambench", "init-range", "--subnet", spec.subnet, "--range", spec.rng, "--reuse-delay", "0s")
	cmd.Env = testproc.EnvWithout("IPAM_")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := testproc.Start(cmd); err != nil {
		return 0, 0, fmt.Errorf("starting ipamctl init-range: %w", err)
	}
	// The peak is read from /proc while it runs, not from wait4's rusage: Go starts children
	// with vfork semantics, and Linux carries the parent's high-water mark into the child's
	// ru_maxrss at exec, so rusage would report ipambench's own peak when that is larger.
	done := make(chan struct{})
	hwm := make(chan int64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if m, err := readMem(cmd.Process.Pid); err == nil && m.HWM > peak {
				peak = m.HWM
			}
			select {
			case <-ctx.Done():
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			case <-done:
				hwm <- peak
				return
			case <-tick.C:
			}
		}
	}()
	err := cmd.Wait()
	took := time.Since(start)
	close(done)
	peak := <-hwm
	if err != nil {
		return took, 0, fmt.Errorf("ipamctl init-range --subnet %s --range %s: %w\n%s", spec.subnet, spec.rng, err, out.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && peak == 0 {
		peak = ru.Maxrss // gone before the first reading: an upper bound (KiB on Linux)
	}
	return took, peak, nil
}

// pool returns the named pool, creating it on first use: init-range of ours and seeding of the
// baseline twin, timed, alternating. Pools up to a /16 get InitRounds timings, the extra ones
// on scratch prefixes that are deleted again; larger pools one, the real one.
func (r *runner) pool(ctx context.Context, name string) (*benchPool, error) {
	if p := r.pools[name]; p != nil {
		return p, nil
	}
	spec := poolSizes[name]
	n, err := pool.NewNetwork(spec.subnet, "")
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	size := spec.size()
	p := &benchPool{spec: spec, net: n, size: size, attached: map[int]bool{}, held: newHeld()}
	rounds := 1
	if size <= 1<<16 && r.cfg.Phases["initrange"] {
		rounds = r.cfg.InitRounds
	}
	r.logf("pool %s: %s, %s, %d addresses: init-range and baseline seeding, %d round(s)", name, spec.subnet, spec.rng, size, rounds)
	for round := 1; round <= rounds; round++ {
		prefix, basePrefix := r.prefix, r.basePrefix+name+"/"
		if round > 1 {
			prefix = fmt.Sprintf("%sscratch-%s-%d", r.runPrefix, name, round)
			basePrefix = fmt.Sprintf("%sbaseline-scratch-%s-%d/", r.runPrefix, name, round)
		}
		took, rss, err := r.initRange(ctx, prefix, spec)
		if err != nil {
			return nil, err
		}
		base := newBaseSpace(r.cli, basePrefix, size)
		baseTook, err := base.seed(ctx)
		if err != nil {
			return nil, err
		}
		r.res.InitRange = append(r.res.InitRange, initRow{Pool: name, Addrs: size, Round: round, Ours: took, MaxRSSKiB: rss, Baseline: baseTook})
		r.logf("  round %d: init-range %s (ipamctl peak RSS %.0f MiB), baseline puts %s", round, took.Round(time.Millisecond), float64(rss)/1024, baseTook.Round(time.Millisecond))
		if round == 1 {
			p.base = base
			continue
		}
		if err := r.deletePrefix(ctx, prefix+"/"); err != nil {
			return nil, err
		}
		if err := r.deletePrefix(ctx, basePrefix); err != nil {
			return nil, err
		}
	}
	if err := r.checkCounts(ctx, p); err != nil {
		return nil, err
	}
	r.pools[name] = p
	return p, nil
}

// checkCounts makes sure the pool holds what this run thinks: a fill that fell short would
// measure another utilisation than the one reported. A release is answered before it commits
// (docs/ARCHITECTURE.md, ReleaseAddress), so the counts may lag the answers: it looks again for
// as long as a release may take.
func (r *runner) checkCounts(ctx context.Context, p *benchPool) error {
	cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	for deadline := time.Now().Add(callTimeout); ; {
		free, used, err := r.store.Counts(cctx, p.net.Subnet)
		if err != nil {
			return err
		}
		if int(free) == p.size-p.used && int(used) == p.used {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool %s: %d free and %d used, want %d and %d", p.spec.name, free, used, p.size-p.used, p.used)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// attach is `docker network create` on daemon i: RequestPool, once per daemon.
func (r *runner) attach(ctx context.Context, p *benchPool, i int) error {
	if p.attached[i] {
		return nil
	}
	d := r.daemons[i]
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	res, err := d.client.RequestPool(cctx, pluginclient.RequestPoolRequest{AddressSpace: "talkingdata", Pool: p.spec.subnet, V6: p.net.Subnet.Addr().Is6()})
	if err != nil {
		return fmt.Errorf("RequestPool %s on %s: %w", p.spec.subnet, d.id, err)
	}
	if p.poolID != "" && res.PoolID != p.poolID {
		return fmt.Errorf("RequestPool %s on %s: PoolID %q, another daemon said %q", p.spec.subnet, d.id, res.PoolID, p.poolID)
	}
	p.poolID, p.attached[i] = res.PoolID, true
	return nil
}

// fill brings ours and the baseline to want used addresses. The throughput pool is filled
// through the first daemon (RequestAddress, as dockerd would), so that the daemon RSS figure
// of a full pool is that of a daemon that handed out every address itself; the other pools
// in-process through the pool package's public API, which is much faster than the socket.
// Neither writes our key layout by hand. The baseline's keys are moved with bare
// transactions, at the same time: nothing is measured during a fill.
//
// etcd is not compacted after a fill: compacting the history of a 1M fill takes minutes, and
// the run's whole history fits etcd's quota (quotaBytes).
func (r *runner) fill(ctx context.Context, p *benchPool, want int) error {
	add := want - p.used
	if add <= 0 {
		return nil
	}
	start := time.Now()
	baseDone := make(chan error, 1)
	var baseTook time.Duration
	go func() {
		err := p.base.fill(ctx, min(want, p.size))
		baseTook = time.Since(start)
		baseDone <- err
	}()
	var err error
	how := "through " + r.daemons[0].id
	if p.spec.name == r.cfg.Pool {
		err = r.fillThroughDaemon(ctx, p, add)
	} else {
		how = "in-process"
		err = r.fillInProcess(ctx, p, add)
	}
	ours := time.Since(start)
	if berr := <-baseDone; err == nil {
		err = berr
	}
	if err != nil {
		return err
	}
	p.used = want
	if err := r.checkCounts(ctx, p); err != nil {
		return err
	}
	r.logf("  filled pool %s to %d/%d used: ours %s %s, baseline %s (at the same time)", p.spec.name, want, p.size, how,
		ours.Round(time.Millisecond), baseTook.Round(time.Millisecond))
	return nil
}

// inProcessFillers keep the store's transaction batches full (64 claims each, two in flight).
const inProcessFillers = 256

// fillers runs fn(i) for i in [0, n) from conc goroutines and returns the first error.
func (r *runner) fillers(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	var next atomic.Int64
	var once sync.Once
	var first error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func (r *runner) fillThroughDaemon(ctx context.Context, p *benchPool, n int) error {
	if err := r.attach(ctx, p, 0); err != nil {
		return err
	}
	d := r.daemons[0]
	return r.fillers(ctx, n, r.cfg.FillConc, func(ctx context.Context, _ int) error {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		_, err := d.client.RequestAddress(cctx, pluginclient.RequestAddressRequest{PoolID: p.poolID,
			Options: map[string]string{pluginclient.OptMAC: r.nextMAC()}})
		if err != nil {
			return fmt.Errorf("filling pool %s through %s: %w", p.spec.name, d.id, err)
		}
		return nil
	})
}

// fillInProcess claims the pool's addresses in the order of a random permutation that is kept
// across fills, each with Allocate of that address (as `docker run --ip` would): no two fillers
// race for one address, and the next fill goes on where the last one stopped. The random pick
// of Allocate without an address would do as well, but gets slower as the pool fills up, and
// this is setup, not what is measured.
func (r *runner) fillInProcess(ctx context.Context, p *benchPool, n int) error {
	if p.order == nil {
		p.order = rand.Perm(p.size)
	}
	rng := p.spec.hostRange()
	pools := pool.New(r.store, pool.Config{Host: "fill"})
	return r.fillers(ctx, n, inProcessFillers, func(ctx context.Context, i int) error {
		a := pool.AddrAt(rng, uint64(p.order[p.used+i]))
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		if _, err := pools.Allocate(cctx, p.net, a, pool.Allocation{Kind: pool.KindContainer, MAC: r.nextMAC()}); err != nil {
			return fmt.Errorf("filling pool %s in-process: %w", p.spec.name, err)
		}
		return nil
	})
}
