package pool

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Releases answered before they are durable.
//
// Nothing dockerd does after ReleaseAddress needs the release to be in
// etcd: a release that never lands leaves the address used, which gc
// finds (an orphan), and never lets it be handed out twice. So the
// release of a container address this process claimed is answered once
// it has started, and its transaction overlaps what dockerd does next
// (tearing the sandbox down, the next container's RequestAddress), or
// rides in the next claim's transaction (MayLinger).
// What could tell the difference waits for it: this process's claims of
// the same address, for the same endpoint (owner key), and its Detach of
// the pool. Another host sees the address used until the transaction
// commits: a lingering moment and a commit later, or longer when etcd is
// slow (allocateNamed looks again). A sticky record is released after its
// commit, as before: its name is meant to move to another host at once.

// maxReleasesBehind bounds the releases under way: beyond it a release is
// answered after its commit, as every release was before, which pushes
// back on dockerd when etcd is slower than it.
const maxReleasesBehind = 256

// releasesBehind tracks the releases ReleaseBehind started.
type releasesBehind struct {
	mu       sync.Mutex
	inFlight map[claimKey]*releaseBehind // until done has returned
	closed   bool                        // WaitReleases was called: no new ones
	wg       sync.WaitGroup
	failed   atomic.Uint64
}

type releaseBehind struct {
	owner string // the record's, for claims of the same endpoint
	done  chan struct{}
}

// ReleaseBehind starts the release of addr when it is a container address
// this process claimed, unbound to a sticky name, and returns without
// waiting for the commit; done gets the outcome as Release would have
// returned it, and returns the error it could not deal with (counted by
// ReleasesFailed). It reports false, doing nothing, for any other address,
// when maxReleasesBehind are under way, and after WaitReleases: the
// caller then calls Release. timeout bounds the release.
func (p *Pools) ReleaseBehind(subnet netip.Prefix, addr netip.Addr, timeout time.Duration, done func(released bool, err error) error) bool {
	k := claimKey{subnet, addr}
	claimed, ok := p.claimed.Load(k)
	if !ok {
		return false
	}
	used := claimed.(Entry).Used
	if used.Kind != KindContainer || used.Sticky != "" {
		return false
	}
	b := &p.behind
	b.mu.Lock()
	if b.closed || b.inFlight[k] != nil || len(b.inFlight) >= maxReleasesBehind {
		b.mu.Unlock()
		return false
	}
	if b.inFlight == nil {
		b.inFlight = map[claimKey]*releaseBehind{}
	}
	r := &releaseBehind{owner: used.Owner(), done: make(chan struct{})}
	b.inFlight[k] = r
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), lingerKey{}, true), timeout)
		released, err := p.release(ctx, subnet, addr)
		cancel()
		// Those waiting go on once done has dealt with the outcome (a
		// release kept for later is kept by then).
		if done(released, err) != nil {
			b.failed.Add(1)
		}
		b.mu.Lock()
		delete(b.inFlight, k)
		b.mu.Unlock()
		close(r.done)
	}()
	return true
}

type lingerKey struct{}

// MayLinger says that ctx is a release's that dockerd was answered for: a
// store may hold its write back a moment, to send it with the next one
// (one etcd transaction instead of two).
func MayLinger(ctx context.Context) bool { return ctx.Value(lingerKey{}) != nil }

// ReleasesInFlight counts the releases ReleaseBehind started that have not
// ended.
func (p *Pools) ReleasesInFlight() int {
	p.behind.mu.Lock()
	defer p.behind.mu.Unlock()
	return len(p.behind.inFlight)
}

// ReleasesFailed counts the releases ReleaseBehind started that failed:
// each address stays used until gc.
func (p *Pools) ReleasesFailed() uint64 { return p.behind.failed.Load() }

// WaitReleases stops ReleaseBehind from starting more and waits until
// every release it started has ended, or ctx is done.
func (p *Pools) WaitReleases(ctx context.Context) error {
	p.behind.mu.Lock()
	p.behind.closed = true
	p.behind.mu.Unlock()
	all := make(chan struct{})
	go func() { p.behind.wg.Wait(); close(all) }()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d releases still in flight: %w", p.ReleasesInFlight(), ctx.Err())
	}
}

// afterReleases waits for this process's releases in flight in subnet
// that a change must not overtake: those whose address or endpoint
// conflicts says it touches. waited says whether there were any.
func (p *Pools) afterReleases(ctx context.Context, subnet netip.Prefix, conflicts func(addr netip.Addr, owner string) bool) (waited bool, err error) {
	for {
		var wait chan struct{}
		p.behind.mu.Lock()
		for k, r := range p.behind.inFlight {
			if k.subnet == subnet && conflicts(k.addr, r.owner) {
				wait = r.done
				break
			}
		}
		p.behind.mu.Unlock()
		if wait == nil {
			return waited, nil
		}
		waited = true
		select {
		case <-wait:
		case <-ctx.Done():
			return waited, fmt.Errorf("waiting for this host's release in flight in pool %s: %w", subnet, ctx.Err())
		}
	}
}

// waitedForReleases waits for this process's releases in flight in subnet
// and says whether there were any (and all ended): a claim that found no
// free address looks again after them.
func (p *Pools) waitedForReleases(ctx context.Context, subnet netip.Prefix) bool {
	waited, err := p.afterReleases(ctx, subnet, every)
	return waited && err == nil
}

// every is the conflict with any release in the pool.
func every(netip.Addr, string) bool { return true }

// of is the conflict with one address.
func of(addr netip.Addr) func(netip.Addr, string) bool {
	return func(a netip.Addr, _ string) bool { return a == addr }
}

// otherHostRelease bounds how long a claim refused an address another
// host's container holds keeps looking before it refuses: that host may
// have answered the container's release and not committed it yet, as when
// a container moves to another host with its --ip. It covers the linger
// and a few commits; only a refusal costs it.
const otherHostRelease = time.Second

// lookAgain says whether a claim refused an address holder holds should
// look again, after waiting: holder is another host's container, and the
// claim has waited less than p.lookAgainFor in all (waited), in growing
// steps.
func (p *Pools) lookAgain(ctx context.Context, waited *time.Duration, holder *Allocation) bool {
	if holder == nil || holder.Kind != KindContainer || holder.Host == p.cfg.Host || *waited >= p.lookAgainFor {
		return false
	}
	step := max(*waited, p.lookAgainFor/16)
	*waited += step
	t := time.NewTimer(step)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// inUse refuses addr, which holder holds.
func inUse(addr netip.Addr, holder *Allocation) error {
	return fmt.Errorf("%w: %s is in use: %s", ErrUnavailable, addr, holder.Describe())
}
