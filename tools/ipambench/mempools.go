package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// memPools measures one daemon with many pools (issue 19: a host on many networks): it seeds
// -mem-pools pools of 65,535 addresses (IPv6 /112s of 2001:db8:64::/48) with init-range, and
// the first daemon allocates and releases one address in each, which loads its copy of the pool
// (a bitmap and its watches); the daemon's memory is recorded before and after.
func (r *runner) memPools(ctx context.Context) error {
	if err := r.memCheckpoint(fmt.Sprintf("before %d pools of 64k", r.cfg.MemPools)); err != nil {
		return err
	}
	d := r.daemons[0]
	var seed, load []time.Duration
	for i := range r.cfg.MemPools {
		subnet := fmt.Sprintf("2001:db8:64:%x::/112", i)
		spec := poolSpec{name: fmt.Sprintf("64k-%d", i+1), subnet: subnet, rng: subnet}
		n, err := pool.NewNetwork(subnet, "")
		if err != nil {
			return fmt.Errorf("pool %s: %w", subnet, err)
		}
		took, _, err := r.initRange(ctx, r.prefix, spec)
		if err != nil {
			return err
		}
		seed = append(seed, took)
		p := &benchPool{spec: spec, net: n, size: spec.size(), attached: map[int]bool{}, held: newHeld()}
		if err := r.attach(ctx, p, 0); err != nil {
			return err
		}
		l := &oursLoad{r: r, p: p, daemons: r.daemons[:1], held: p.held}
		id := r.macs.Add(1)
		a, lat, _, err := l.take(ctx, d, id)
		if err != nil {
			return fmt.Errorf("first allocation from %s: %w", subnet, err)
		}
		load = append(load, lat)
		if err := l.give(ctx, d, a, id); err != nil {
			return err
		}
		if err := r.checkCounts(ctx, p); err != nil {
			return err
		}
	}
	r.logf("mempools: %d pools of 64k seeded (init-range median %s) and loaded by %s (first allocation median %s, max %s)",
		r.cfg.MemPools, fmtDur(median(seed)), d.id, fmtDur(median(load)), fmtDur(slices.Max(load)))
	return r.memCheckpoint(fmt.Sprintf("%d pools of 64k loaded", r.cfg.MemPools))
}
