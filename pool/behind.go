package pool

import (
	"context"
	"errors"
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
// (tearing the sandbox down, the next container's RequestAddress).
// What could tell the difference waits for it: this process's claims of
// the same address, for the same endpoint (owner key) or for the same
// sticky name. Other hosts see the address used until the transaction
// commits, one round trip later.

// maxReleasesBehind bounds the releases in flight: beyond it a release is
// answered after its commit, as every release was before, which pushes
// back on dockerd when etcd is slower than it.
const maxReleasesBehind = 256

// releasesBehind tracks the releases ReleaseBehind started.
type releasesBehind struct {
	mu       sync.Mutex
	inFlight map[claimKey]*releaseBehind
	wg       sync.WaitGroup
	failed   atomic.Uint64
}

type releaseBehind struct {
	owner, sticky string // the record's, for claims that must wait
	done          chan struct{}
}

// ReleaseBehind starts the release of addr when it is a container address
// this process claimed and returns without waiting for the commit; done
// gets the outcome as Release would have returned it, and returns the
// error it could not deal with (counted as failed). It reports false,
// doing nothing, for any other address, or when maxReleasesBehind are in
// flight: the caller then calls Release. timeout bounds the release.
func (p *Pools) ReleaseBehind(subnet netip.Prefix, addr netip.Addr, timeout time.Duration, done func(released bool, err error) error) bool {
	k := claimKey{subnet, addr}
	claimed, ok := p.claimed.Load(k)
	if !ok || claimed.(Entry).Used.Kind != KindContainer {
		return false
	}
	used := claimed.(Entry).Used
	b := &p.behind
	b.mu.Lock()
	if b.inFlight == nil {
		b.inFlight = map[claimKey]*releaseBehind{}
	}
	if b.inFlight[k] != nil || len(b.inFlight) >= maxReleasesBehind {
		b.mu.Unlock()
		return false
	}
	r := &releaseBehind{owner: used.Owner(), sticky: used.Sticky, done: make(chan struct{})}
	b.inFlight[k] = r
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), behindKey{}, true), timeout)
		released, err := p.release(ctx, subnet, addr)
		cancel()
		b.mu.Lock()
		delete(b.inFlight, k)
		b.mu.Unlock()
		close(r.done)
		if done(released, err) != nil {
			b.failed.Add(1)
		}
	}()
	return true
}

type behindKey struct{}

// Behind says that ctx is a release's that dockerd was answered for: a
// store may hold its write back a moment, to send it with the next one
// (one etcd transaction instead of two).
func Behind(ctx context.Context) bool { return ctx.Value(behindKey{}) != nil }

// ReleasesBehind reports the releases ReleaseBehind has in flight and how
// many of all it started failed (the address stays used until gc).
func (p *Pools) ReleasesBehind() (inFlight int, failed uint64) {
	p.behind.mu.Lock()
	defer p.behind.mu.Unlock()
	return len(p.behind.inFlight), p.behind.failed.Load()
}

// WaitReleases waits until every release ReleaseBehind started has ended,
// or ctx is done.
func (p *Pools) WaitReleases(ctx context.Context) error {
	all := make(chan struct{})
	go func() { p.behind.wg.Wait(); close(all) }()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
		n, _ := p.ReleasesBehind()
		return fmt.Errorf("%d releases still in flight: %w", n, ctx.Err())
	}
}

// afterReleases waits for the releases in flight in subnet that a claim of
// addr for a must not overtake: of addr itself, of a's endpoint or of a's
// sticky name. addr may be invalid (any address) and a nil (an address
// alone).
func (p *Pools) afterReleases(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a *Allocation) error {
	var owner, sticky string
	if a != nil {
		owner, sticky = a.Owner(), a.Sticky
	}
	for {
		var wait chan struct{}
		p.behind.mu.Lock()
		for k, r := range p.behind.inFlight {
			if k.subnet == subnet && (k.addr == addr || owner != "" && r.owner == owner || sticky != "" && r.sticky == sticky) {
				wait = r.done
				break
			}
		}
		p.behind.mu.Unlock()
		if wait == nil {
			return nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("waiting for this host's release in flight in pool %s: %w", subnet, ctx.Err())
		}
	}
}

// otherHostRelease is how long a claim refused an address that another
// host's container holds waits before it looks once more: that host may
// have answered the container's release and not committed it yet, as
// when a container moves to another host (a sticky name, an --ip). It
// covers the linger and a commit on a LAN, so only a refusal costs it.
const otherHostRelease = 250 * time.Millisecond

// heldError refuses an address because holder holds it.
type heldError struct {
	addr   netip.Addr
	holder *Allocation
}

func inUse(addr netip.Addr, holder *Allocation) error { return &heldError{addr, holder} }

func (e *heldError) Error() string {
	return fmt.Sprintf("%v: %s is in use: %s", ErrUnavailable, e.addr, e.holder.Describe())
}

func (e *heldError) Unwrap() error { return ErrUnavailable }

// releasedElsewhere says whether a claim refused with err on its first
// attempt should look again: another host's container holds the address,
// which that host may be releasing. It waits otherHostRelease first.
func (p *Pools) releasedElsewhere(ctx context.Context, attempt int, err error) bool {
	var held *heldError
	if attempt > 0 || !errors.As(err, &held) || held.holder.Kind != KindContainer || held.holder.Host == p.cfg.Host {
		return false
	}
	t := time.NewTimer(p.lookAgainAfter)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
