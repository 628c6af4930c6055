package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go4.org/netipx"
)

const (
	// DefaultMaxAutoSeed bounds how many addresses a first RequestPool
	// seeds by itself (a /16): more would keep `docker network create`
	// waiting; larger pools are seeded with `ipamctl init-range`.
	DefaultMaxAutoSeed = 1 << 16
	// MaxPoolSize bounds a pool's seeded ranges. Each free address is one
	// etcd key (about 150 bytes with its index); 2^21 of them stay well
	// inside etcd's default 2 GiB quota, and each daemon's free-set copy
	// takes 256 KiB. An IPv6 pool is therefore seeded with ranges of its
	// subnet (at most a /107), never a whole /64.
	MaxPoolSize = 1 << 21

	// DefaultReuseDelay outlasts Linux neighbours' ARP entries for a
	// departed container (reachable 15-45 s, then stale until
	// gc_stale_time, 60 s), so a new container with the address does not
	// get traffic meant for the old MAC. Routers with hour-long ARP
	// timeouts need gratuitous ARP instead.
	DefaultReuseDelay = time.Minute

	// DefaultStickyTTL keeps a sticky name's address for a week without a
	// container of that name: long enough for a service down over a long
	// weekend, short enough that renamed services do not pin the range.
	DefaultStickyTTL = 7 * 24 * time.Hour

	// maxAttempts bounds retries after lost races. Every lost race means
	// another request won, so the pool as a whole always makes progress.
	maxAttempts = 32
)

// Config holds the per-host settings of Pools.
type Config struct {
	Host        string // this host's id, the owner of what it allocates
	RequireInit bool   // refuse pools not seeded by ipamctl init-range
	MaxAutoSeed uint64 // 0 means DefaultMaxAutoSeed
	// ReuseDelay is recorded in the pools this host creates (Attach on
	// first use, AddRanges): each pool's own delay keeps its released
	// container addresses from being handed out
	// again for this long; 0 disables it.
	ReuseDelay time.Duration
}

// Pools applies the allocation rules for one host on top of a Store.
type Pools struct {
	store Store
	cfg   Config
	now   func() time.Time
	randN func(n uint64) uint64
	// lookAgainFor is otherHostRelease, shorter in tests.
	lookAgainFor time.Duration
	// claimed holds the entries of addresses this process claimed, as the
	// claim left them (claimKey → Entry), so that their release needs no
	// read: a stale one fails its compare, which returns the fresh entry.
	// At most maxRemembered of them: see remember.
	claimed    sync.Map
	remembered atomic.Int64 // entries in claimed
	metas      sync.Map     // netip.Prefix → the Meta claimed entries refer to
	behind     releasesBehind
}

// maxRemembered bounds the claimed cache at about 1.6 MB (an entry takes
// some 400 bytes). A host runs hundreds of containers, not tens of
// thousands; a daemon that hands out more (a whole /16 through one host)
// reads each address beyond the bound once before releasing it, and its
// memory stays flat.
const maxRemembered = 4096

type claimKey struct {
	subnet netip.Prefix
	addr   netip.Addr
}

// New returns the rules engine for cfg.Host.
func New(store Store, cfg Config) *Pools {
	if cfg.MaxAutoSeed == 0 {
		cfg.MaxAutoSeed = DefaultMaxAutoSeed
	}
	return &Pools{store: store, cfg: cfg, now: time.Now, randN: rand.Uint64N, lookAgainFor: otherHostRelease}
}

// Host is the id this engine allocates for.
func (p *Pools) Host() string { return p.cfg.Host }

// Attach makes n's pool usable by this host: it creates and seeds the pool
// on first use (unless RequireInit), finishes a seeding someone else left
// half done, and counts this host as a user.
func (p *Pools) Attach(ctx context.Context, n Network) error {
	var r retrier
	m, ok, err := p.meta(ctx, &r, n.Subnet)
	if err != nil {
		return fmt.Errorf("reading pool %s: %w", n.Subnet, err)
	}
	if !ok {
		// An IPv6 network without --ip-range spans a /64 or more: name a
		// range that can be seeded instead.
		size, seed := RangeSize(n.Range()), FormatRange(n.Range())
		if size > p.cfg.MaxAutoSeed {
			seed = firstBlock(n.Subnet, p.cfg.MaxAutoSeed).String()
		}
		if p.cfg.RequireInit {
			return fmt.Errorf("%w: pool %s; run `ipamctl init-range --subnet %s --range %s` first",
				ErrNotInitiated, n.Subnet, n.Subnet, seed)
		}
		if size > p.cfg.MaxAutoSeed {
			return fmt.Errorf("pool %s: %s addresses are too many to seed on first use (limit %d, one etcd key each): give a smaller --ip-range such as %s, or seed the pool first with `ipamctl init-range --subnet %s --range %s`",
				n.Subnet, FormatCount(size), p.cfg.MaxAutoSeed, seed, n.Subnet, seed)
		}
		var b netipx.IPSetBuilder
		b.AddRange(n.Range())
		set, _ := b.IPSet()
		// Retrying is safe: a creation that did commit is found as the
		// existing pool.
		m, err = retried(ctx, &r, func() (Meta, error) {
			m, _, err := p.store.CreateMeta(ctx, Meta{Subnet: n.Subnet, Ranges: set, Seeding: true, CreatedBy: p.cfg.Host, Created: p.now().UTC(), ReuseDelay: p.cfg.ReuseDelay, StickyTTL: DefaultStickyTTL})
			return m, err
		})
		if err != nil {
			return fmt.Errorf("creating pool %s: %w", n.Subnet, err)
		}
	}
	if m.Seeding {
		if _, err := p.finishSeeding(ctx, m, nil); err != nil {
			return err
		}
	}
	if n.IPRange.IsValid() && !m.Ranges.ContainsRange(n.Range()) {
		return fmt.Errorf("pool %s: ip-range %s is not seeded (seeded: %s); run `ipamctl init-range --subnet %s --range %s`",
			n.Subnet, n.IPRange, FormatRanges(m.Ranges), n.Subnet, n.IPRange)
	}
	if err := p.addRef(ctx, &r, n.Subnet, 1); err != nil {
		return fmt.Errorf("recording host %q as user of pool %s: %w", p.cfg.Host, n.Subnet, err)
	}
	return nil
}

// Detach drops this host's use of the pool; the pool itself stays, other
// hosts may use it.
func (p *Pools) Detach(ctx context.Context, subnet netip.Prefix) error {
	// After its containers' releases: `ipamctl pool rm` may follow.
	if _, err := p.afterReleases(ctx, subnet, every); err != nil {
		return err
	}
	var r retrier
	if _, ok, err := p.meta(ctx, &r, subnet); err != nil {
		return fmt.Errorf("reading pool %s: %w", subnet, err)
	} else if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
	}
	if err := p.addRef(ctx, &r, subnet, -1); err != nil {
		return fmt.Errorf("dropping host %q from pool %s: %w", p.cfg.Host, subnet, err)
	}
	return nil
}

// meta is Store.Meta, retried after transient errors.
func (p *Pools) meta(ctx context.Context, r *retrier, subnet netip.Prefix) (Meta, bool, error) {
	return retriedFound(ctx, r, func() (Meta, bool, error) { return p.store.Meta(ctx, subnet) })
}

// addRef is Store.AddRef, retried after transient errors under one op id,
// which keeps a retry of a change that did commit from counting twice.
func (p *Pools) addRef(ctx context.Context, r *retrier, subnet netip.Prefix, delta int) error {
	op := newOpID()
	_, err := retried(ctx, r, func() (int, error) { return p.store.AddRef(ctx, subnet, p.cfg.Host, delta, op) })
	return err
}

// AddRanges records set as seeded in subnet's pool (creating the pool) and
// seeds its free set. It is idempotent and never touches used addresses.
func (p *Pools) AddRanges(ctx context.Context, subnet netip.Prefix, set *netipx.IPSet, progress func(done, total uint64)) (added uint64, err error) {
	var in netipx.IPSetBuilder
	in.AddRange(HostRange(subnet))
	inside, _ := in.IPSet()
	for _, r := range set.Ranges() {
		if !inside.ContainsRange(r) {
			return 0, fmt.Errorf("range %s is not inside subnet %s (usable %s)", FormatRange(r), subnet, FormatRange(HostRange(subnet)))
		}
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		m, ok, err := p.store.Meta(ctx, subnet)
		if err != nil {
			return 0, fmt.Errorf("reading pool %s: %w", subnet, err)
		}
		var b netipx.IPSetBuilder
		b.AddSet(set)
		if ok {
			b.AddSet(m.Ranges)
		}
		union, _ := b.IPSet()
		if size := SetSize(union); size > MaxPoolSize {
			return 0, fmt.Errorf("pool %s would hold %s addresses, more than the limit of %d (each free address is one etcd key and a bit in every daemon's copy): seed a smaller range, such as %s",
				subnet, FormatCount(size), MaxPoolSize, firstBlock(subnet, MaxPoolSize))
		}
		next := Meta{Subnet: subnet, Ranges: union, Seeding: true, CreatedBy: p.cfg.Host, Created: p.now().UTC(), ReuseDelay: p.cfg.ReuseDelay, StickyTTL: DefaultStickyTTL}
		if !ok {
			m, ok, err = p.store.CreateMeta(ctx, next)
		} else if !union.Equal(m.Ranges) || m.Seeding {
			next.CreatedBy, next.Created, next.ReuseDelay, next.StickyTTL = m.CreatedBy, m.Created, m.ReuseDelay, m.StickyTTL
			m, ok, err = p.store.UpdateMeta(ctx, m, next)
		}
		if err != nil {
			return 0, fmt.Errorf("recording ranges of pool %s: %w", subnet, err)
		}
		if ok {
			return p.finishSeeding(ctx, m, progress)
		}
	}
	return 0, fmt.Errorf("recording ranges of pool %s: %w", subnet, ErrContention)
}

// Settings are a pool's settings for every host; nil leaves one as it is.
type Settings struct {
	ReuseDelay *time.Duration
	StickyTTL  *time.Duration
}

// Set records s in the pool (`ipamctl pool set`): every daemon and ipamctl
// apply it from then on.
func (p *Pools) Set(ctx context.Context, subnet netip.Prefix, s Settings) error {
	switch {
	case s.ReuseDelay != nil && *s.ReuseDelay < 0:
		return fmt.Errorf("reuse delay %s: it cannot be negative (0 turns it off)", *s.ReuseDelay)
	case s.StickyTTL != nil && *s.StickyTTL <= 0:
		return fmt.Errorf("sticky TTL %s: it must be positive", *s.StickyTTL)
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		m, ok, err := p.store.Meta(ctx, subnet)
		switch {
		case err != nil:
			return fmt.Errorf("reading pool %s: %w", subnet, err)
		case !ok:
			return fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
		}
		next := m
		if s.ReuseDelay != nil {
			next.ReuseDelay = *s.ReuseDelay
		}
		if s.StickyTTL != nil {
			next.StickyTTL = *s.StickyTTL
		}
		if next.ReuseDelay == m.ReuseDelay && next.StickyTTL == m.StickyTTL {
			return nil
		}
		if _, ok, err = p.store.UpdateMeta(ctx, m, next); err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("setting pool %s: %w", subnet, ErrContention)
}

// finishSeeding seeds m's ranges and clears its Seeding mark. Seeding is
// idempotent, so several hosts finishing one pool at once is harmless.
func (p *Pools) finishSeeding(ctx context.Context, m Meta, progress func(done, total uint64)) (uint64, error) {
	var total uint64
	for attempt := 0; attempt < maxAttempts; attempt++ {
		added, err := p.store.Seed(ctx, m.Subnet, m.Ranges, progress)
		total += added
		if err != nil {
			return total, fmt.Errorf("seeding pool %s (%d addresses added so far; re-run to continue): %w", m.Subnet, total, err)
		}
		if !m.Seeding {
			return total, nil // a re-run that changed nothing leaves meta alone, so no concurrent swap loses its compare
		}
		done := m
		done.Seeding = false
		cur, ok, err := p.store.UpdateMeta(ctx, m, done)
		if err != nil {
			return total, fmt.Errorf("marking pool %s seeded: %w", m.Subnet, err)
		}
		if ok || !cur.Seeding {
			return total, nil
		}
		m = cur // ranges grew meanwhile: seed those too
	}
	return total, fmt.Errorf("seeding pool %s: %w", m.Subnet, ErrContention)
}

// Allocate takes an address for a, from n's range, or want if it is valid.
//
// The reuse delay holds back automatic allocation only. An endpoint that
// names its address (`--ip`) is that address's service coming back: a
// restart, a recreate, a reconnect, a move to another host. The delay
// exists so that a container that did not choose an address does not
// inherit traffic meant for another; the one that asked for it by name is
// the one that traffic is for, and Docker's own IPAM hands it out at once.
//
// The address to claim comes from the pool's local free-set copy, at a
// random point of the range rather than the lowest free one: hosts sharing
// a pool would otherwise all race for the same key. So the claim's
// transaction is the only round trip; a copy that lagged behind another
// host's claim costs one more.
func (p *Pools) Allocate(ctx context.Context, n Network, want netip.Addr, a Allocation) (netip.Addr, error) {
	a.Host, a.Since = p.cfg.Host, p.now().UTC()
	owner := a.Owner()
	if _, err := p.afterReleases(ctx, n.Subnet, func(addr netip.Addr, o string) bool { return addr == want || owner != "" && o == owner }); err != nil {
		return netip.Addr{}, err
	}
	var r retrier // shared by every attempt: one backoff, one count
	if want.IsValid() {
		if err := CheckHostAddr(n.Subnet, want); err != nil {
			return netip.Addr{}, err
		}
		return p.allocateNamed(ctx, &r, n, want, a)
	}
	if a.Sticky != "" {
		return p.allocateSticky(ctx, &r, n, a)
	}
	return p.allocateFree(ctx, &r, n, a)
}

// errBoundMeanwhile: a sticky claim found its name bound by another
// request since it looked.
var errBoundMeanwhile = errors.New("the name was bound meanwhile")

// allocateSticky gives a the address its sticky name is bound to, from
// any host, or binds the name to a free one. Two hosts starting the same
// name at once: the binding is written with the claim, so one wins and
// the other is refused with the holder.
func (p *Pools) allocateSticky(ctx context.Context, r *retrier, n Network, a Allocation) (netip.Addr, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		bound, ok, err := p.binding(ctx, r, n.Subnet, a.Sticky)
		if err != nil {
			return netip.Addr{}, err
		}
		if !ok {
			got, err := p.allocateFree(ctx, r, n, a)
			if !errors.Is(err, errBoundMeanwhile) {
				return got, err
			}
			continue
		}
		err = p.claimOutsideFreeSet(ctx, n.Subnet, bound, a)
		if err == nil {
			return bound, nil
		}
		if !errors.Is(err, errUnbound) {
			return netip.Addr{}, err
		}
		// Unbound meanwhile (the binding ended): look again.
	}
	return netip.Addr{}, fmt.Errorf("claiming the address of name %q in pool %s: %w", a.Sticky, n, ErrContention)
}

// binding is Store.Binding, retried after transient errors.
func (p *Pools) binding(ctx context.Context, r *retrier, subnet netip.Prefix, name string) (netip.Addr, bool, error) {
	a, ok, err := retriedFound(ctx, r, func() (netip.Addr, bool, error) { return p.store.Binding(ctx, subnet, name) })
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("reading the binding of name %q in pool %s: %w", name, subnet, err)
	}
	return a, ok, nil
}

// allocateFree claims a free address of n's range for a.
func (p *Pools) allocateFree(ctx context.Context, r *retrier, n Network, a Allocation) (netip.Addr, error) {
	free, err := p.store.FreeSet(ctx, n.Subnet)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reading the free set of pool %s: %w", n.Subnet, err)
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		addr, waiting, ok := free.Take(n.Range(), p.randN)
		switch {
		case !ok && p.waitedForReleases(ctx, n.Subnet):
			continue // one of them may have freed an address
		case !ok && waiting > 0:
			return netip.Addr{}, p.allDelayed(ctx, n)
		case !ok:
			return netip.Addr{}, fmt.Errorf("%w in pool %s", ErrNoFree, n)
		}
		c, err := p.claim(ctx, r, n.Subnet, addr, a, false)
		if err != nil {
			free.Add(addr) // the claim may not have reached the store; if it did, the store's update follows
			return netip.Addr{}, p.undoClaim(n.Subnet, a, fmt.Errorf("claiming an address in pool %s: %w", n, err))
		}
		switch verdictOf(c, addr, false) {
		case claimTaken:
			p.remember(ctx, n.Subnet, addr, a, c.Version)
			return addr, nil
		case claimRetried:
			// An earlier answer was lost: addr stays free, the endpoint
			// has its own. If that attempt's undo freed it meanwhile,
			// claim afresh.
			free.Add(addr)
			if got, err := p.adopt(ctx, n.Subnet, c.Existing, a); !errors.Is(err, errChangedHands) {
				return got, err
			}
		case claimNoPool:
			return netip.Addr{}, fmt.Errorf("%w: %s", ErrUnknownPool, n.Subnet)
		case claimBound:
			free.Add(addr)
			return netip.Addr{}, errBoundMeanwhile
		case claimDelayed:
			free.Add(addr) // still free: the store's report of its delay keeps it aside
		}
		// Lost a race the copy did not know of yet: take another.
	}
	return netip.Addr{}, fmt.Errorf("claiming an address in pool %s: %w", n, ErrContention)
}

// allocateNamed claims want, the address the request named (--ip).
func (p *Pools) allocateNamed(ctx context.Context, r *retrier, n Network, want netip.Addr, a Allocation) (netip.Addr, error) {
	var waited time.Duration // for another host's release (lookAgain)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		c, err := p.claim(ctx, r, n.Subnet, want, a, true)
		if err != nil {
			return netip.Addr{}, p.undoClaim(n.Subnet, a, fmt.Errorf("claiming %s in pool %s: %w", want, n.Subnet, err))
		}
		switch verdictOf(c, want, true) {
		case claimTaken:
			p.remember(ctx, n.Subnet, want, a, c.Version)
			return want, nil
		case claimRetried:
			if got, err := p.adopt(ctx, n.Subnet, want, a); !errors.Is(err, errChangedHands) {
				return got, err
			}
			continue // that attempt's undo freed it meanwhile: claim afresh
		case claimNoPool:
			return netip.Addr{}, fmt.Errorf("%w: %s", ErrUnknownPool, n.Subnet)
		case claimHoldsOther:
			return netip.Addr{}, fmt.Errorf("%w: the endpoint (%s) already holds %s in pool %s", ErrUnavailable, a.Describe(), c.Existing, n.Subnet)
		case claimByRule:
			return want, p.claimOutsideFreeSet(ctx, n.Subnet, want, a)
		case claimHeld:
			if p.lookAgain(ctx, &waited, c.Holder) {
				continue
			}
			return netip.Addr{}, inUse(want, c.Holder)
		}
		return netip.Addr{}, p.unseeded(ctx, n.Subnet, want)
	}
	return netip.Addr{}, fmt.Errorf("claiming %s in pool %s: %w", want, n.Subnet, ErrContention)
}

// allDelayed is the refusal when every free address of n's range is in its
// reuse delay: it says when the first comes out, as the store times it.
func (p *Pools) allDelayed(ctx context.Context, n Network) error {
	const why = "the only free ones are in the pool's reuse delay (ipamctl pool show)"
	d, ok, err := p.store.NextReuse(ctx, n.Subnet)
	switch {
	case err != nil:
		return fmt.Errorf("%w in pool %s: %s (reading when the first is due: %v)", ErrNoFree, n, why, err)
	case !ok:
		return fmt.Errorf("%w in pool %s: %s, which has just ended: try again", ErrNoFree, n, why)
	}
	return fmt.Errorf("%w in pool %s: %s; the first is due in %s", ErrNoFree, n, why, d.Round(time.Second))
}

// claimOutsideFreeSet gives a an idle reservation or a hold on an anycast
// address: addresses never in the free set, so Claim cannot take them.
// A failure that may have committed is undone like a claim's (through the
// owner index, which a taken reservation is in).
func (p *Pools) claimOutsideFreeSet(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation) error {
	err := p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) { return claimRule(e, a) })
	if err != nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrUnknownPool) {
		return p.undoClaim(subnet, a, err)
	}
	return err
}

// remember keeps what a claim wrote for the address's release. The pool's
// ranges at the claim's meta version come from a cache, read again only
// when the pool changed.
func (p *Pools) remember(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation, v Version) {
	cached, ok := p.metas.Load(subnet)
	m, _ := cached.(Meta)
	if !ok || m.Rev != v.Meta {
		fresh, found, err := p.store.Meta(ctx, subnet)
		if err != nil || !found || fresh.Rev != v.Meta {
			return // the release reads instead
		}
		p.metas.Store(subnet, fresh)
		m = fresh
	}
	if p.remembered.Load() >= maxRemembered {
		return
	}
	if _, replaced := p.claimed.Swap(claimKey{subnet, addr}, Entry{Addr: addr, Used: &a, Ranges: m.Ranges, ReuseDelay: m.ReuseDelay, Version: v}); !replaced {
		p.remembered.Add(1)
	}
}

// claim is Store.Claim, tried again after transient errors when that is
// safe: for an endpoint in the owner index, whose retry finds what an
// attempt that did commit took (Existing), and for a counted record (a
// gateway), whose op id the address's record shows if an attempt took it.
// Every attempt uses the same a, so an adopted record keeps a's time and
// the undo of a request that gives up still recognises it. A container
// with neither MAC nor name (an engine before 29 with a driver that asks
// for no MAC) is not retried: nothing would find what an attempt took,
// and a retry could take a second address.
func (p *Pools) claim(ctx context.Context, r *retrier, subnet netip.Prefix, addr netip.Addr, a Allocation, takeDelayed bool) (Claim, error) {
	for {
		c, err := p.store.Claim(ctx, subnet, addr, a, takeDelayed)
		if err == nil || !(indexed(a) || counted(&a)) || !r.again(ctx, err) {
			return c, r.giveUp(err)
		}
		if counted(&a) {
			e, err := p.read(ctx, r, subnet, addr)
			if err != nil {
				return Claim{}, err
			}
			if e.Used != nil && slices.Contains(e.Used.Ops, a.Ops[len(a.Ops)-1]) {
				return Claim{Taken: true, Version: e.Version}, nil
			}
		}
	}
}

// indexed says whether a's endpoint is in the owner index (etcdstore's
// owners/ keys): a container with a MAC or an endpoint name.
func indexed(a Allocation) bool { return a.Owner() != "" }

// adopt makes a retried request the owner of what its endpoint already
// holds: it stamps the record with this request's time, so the background
// undo of an earlier failed attempt (which compares the time) leaves it.
// A request that gives up undoes what it may have claimed, as Allocate
// does.
func (p *Pools) adopt(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation) (netip.Addr, error) {
	err := p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) { return adoptRule(e, a) })
	if err != nil {
		return netip.Addr{}, p.undoClaim(subnet, a, err)
	}
	return addr, nil
}

// undoTimeout bounds the background clean-up of a claim whose outcome is
// unknown: long enough to ride out an etcd leader election.
const undoTimeout = 30 * time.Second

// undoClaim handles a claim that failed with an error rather than a lost
// race: its transaction may still have committed (a timeout after the
// commit), leaving an address dockerd will never use or release. The owner
// index tells: in the background, with a fresh deadline, the address held
// by a's endpoint is released if it is still this very attempt's (same
// time stamp; a retry that adopted it has stamped it anew). It returns err
// for the caller.
func (p *Pools) undoClaim(subnet netip.Prefix, a Allocation, err error) error {
	if !indexed(a) {
		return err
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
		defer cancel()
		for ctx.Err() == nil {
			addr, held, err := p.store.Owned(ctx, subnet, a.Owner())
			if err == nil && held {
				err = p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) { return undoRule(e, a, p.now().UTC()) })
			}
			if err == nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	return err
}

// unseeded explains why a, neither free nor used, cannot be had. Docker's
// own IPAM hands out any address of the subnet by --ip; on a LAN shared
// with hosts and routers only the seeded ranges are the plugin's to give,
// so the refusal names the command that adds a.
func (p *Pools) unseeded(ctx context.Context, subnet netip.Prefix, a netip.Addr) error {
	m, ok, err := p.store.Meta(ctx, subnet)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %s is not in the free set of pool %s (reading its ranges: %w)", ErrUnavailable, a, subnet, err)
	case !ok:
		return fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
	case !m.Ranges.Contains(a):
		return fmt.Errorf("%w: %s is outside the seeded ranges of pool %s (%s); to hand it out, seed it with `ipamctl init-range --subnet %s --range %s`",
			ErrUnavailable, a, subnet, FormatRanges(m.Ranges), subnet, a)
	case m.Seeding:
		return fmt.Errorf("%w: %s is not free yet: pool %s is still being seeded; try again in a moment", ErrUnavailable, a, subnet)
	}
	return fmt.Errorf("%w: %s is seeded in pool %s but neither free nor used; run `ipamctl check`", ErrUnavailable, a, subnet)
}

// Gateway records addr as this host's gateway in n's pool. With no addr it
// allocates one from the range (the driver passes the host's own address
// when it has one in the subnet). local says addr is configured on this
// host: only then may it claim an unclaimed host address.
func (p *Pools) Gateway(ctx context.Context, n Network, addr netip.Addr, local bool) (netip.Addr, error) {
	if !addr.IsValid() {
		return p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindGateway, Holders: map[string]int{p.cfg.Host: 1}, Ops: []string{newOpID()}})
	}
	return addr, p.hold(ctx, n.Subnet, addr, KindGateway, local)
}

// Aux records this host's reference to an --aux-address such as the LAN
// router. It never fails for being outside the range or the free set: the
// router is usually neither. A free one leaves the free set, so no
// container gets it.
func (p *Pools) Aux(ctx context.Context, n Network, addr netip.Addr) error {
	return p.hold(ctx, n.Subnet, addr, KindAux, false)
}

func (p *Pools) hold(ctx context.Context, subnet netip.Prefix, addr netip.Addr, kind Kind, local bool) error {
	if err := CheckHostAddr(subnet, addr); err != nil {
		return err
	}
	if _, err := p.afterReleases(ctx, subnet, of(addr)); err != nil {
		return err
	}
	return p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		next, err := holdRule(e, kind, p.cfg.Host, local, p.now().UTC())
		return next, true, err
	})
}

// Release gives back an address this host holds. It reports released=false
// when there was nothing of this host's to release (already free, unknown,
// or a shared address this host holds no reference to): harmless, since
// dockerd may repeat a release after a failure.
func (p *Pools) Release(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (released bool, err error) {
	if err := CheckHostAddr(subnet, addr); err != nil {
		return false, err
	}
	if _, err := p.afterReleases(ctx, subnet, of(addr)); err != nil {
		return false, err
	}
	return p.release(ctx, subnet, addr)
}

// release is Release without waiting for a release in flight.
func (p *Pools) release(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (released bool, err error) {
	err = p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		next, change, err := releaseRule(e, p.cfg.Host, p.now().UTC())
		released = change
		return next, change, err
	})
	return released, err
}

// ExpireBinding ends an idle sticky binding gc listed as expired, only
// while its record is the one listed (the store's revision rev): no
// container of the name took it meanwhile. released is false otherwise.
func (p *Pools) ExpireBinding(ctx context.Context, subnet netip.Prefix, addr netip.Addr, rev int64) (released bool, err error) {
	return p.changeListed(ctx, subnet, addr, func(e Entry) (State, bool) { return expireRule(e, rev) })
}

// ReleaseListed is gc's release of an address it listed as an orphan:
// addr is released as dockerd's release would have done it (freed, or back
// to its idle reservation) only while its record is the one listed (the
// store's revision rev) and every guard holds (a dead host still dead).
// released is false when something changed meanwhile.
func (p *Pools) ReleaseListed(ctx context.Context, subnet netip.Prefix, addr netip.Addr, rev int64, guards ...Guard) (released bool, err error) {
	return p.changeListed(ctx, subnet, addr, func(e Entry) (State, bool) { return listedRule(e, rev, p.now().UTC()) }, guards...)
}

// changeListed applies one of gc's rules, which change only the record gc
// listed: released is false when it changed meanwhile or a guard failed.
func (p *Pools) changeListed(ctx context.Context, subnet netip.Prefix, addr netip.Addr, rule func(Entry) (State, bool), guards ...Guard) (released bool, err error) {
	err = p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		next, change := rule(e)
		released = change
		return next, change, nil
	}, guards...)
	if errors.Is(err, ErrGuard) {
		return false, nil
	}
	return released, err
}

// AddHostAddr records addr as a host's own LAN address (`ipamctl
// host-range`), so no container gets it. The first host that uses it as its
// gateway claims it. added is false when it was recorded already.
func (p *Pools) AddHostAddr(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (added bool, err error) {
	if err := CheckHostAddr(subnet, addr); err != nil {
		return false, err
	}
	err = p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		next, change, err := hostAddrRule(e, p.now().UTC())
		added = change
		return next, change, err
	})
	return added, err
}

// Evict is the operator's release (`ipamctl release`, `ipamctl host
// release`): it frees addr whoever holds it and returns the record it
// removed. An address that hosts' networks still reference (gateway, aux,
// a host address in use as gateway) or containers hold as anycast needs
// force. A reserved or anycast address returns to its idle form (`ipamctl
// reserve rm` and `anycast rm` end those). A non-empty only refuses
// addresses of any other kind.
func (p *Pools) Evict(ctx context.Context, subnet netip.Prefix, addr netip.Addr, force bool, only Kind) (*Allocation, error) {
	if err := CheckHostAddr(subnet, addr); err != nil {
		return nil, err
	}
	var was *Allocation
	err := p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		was = e.Used
		return evictRule(e, subnet, force, only, p.now().UTC())
	})
	return was, err
}

// Reserve takes addr out of automatic allocation under name (`ipamctl
// reserve`): only a request naming it (`docker run --ip`, on any host) gets
// it, and its release returns it to the reservation. A container holding
// addr keeps it. It returns the record as it now is.
func (p *Pools) Reserve(ctx context.Context, subnet netip.Prefix, addr netip.Addr, name string) (*Allocation, error) {
	if name == "" {
		return nil, fmt.Errorf("reserving %s: a reservation needs a name", addr)
	}
	return p.edit(ctx, subnet, addr, func(e Entry) (State, bool, error) { return reserveRule(e, name, p.now().UTC()) })
}

// Unreserve ends addr's reservation: an idle one returns to the free set,
// a held one stays with its container until released. It returns the
// record as it now is (nil: no longer used).
func (p *Pools) Unreserve(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (*Allocation, error) {
	return p.edit(ctx, subnet, addr, func(e Entry) (State, bool, error) { return unreserveRule(e) })
}

// AddAnycast marks addr as anycast (`ipamctl anycast add`): every host may
// hold it once at the same time, through requests naming it.
func (p *Pools) AddAnycast(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (*Allocation, error) {
	return p.edit(ctx, subnet, addr, func(e Entry) (State, bool, error) { return anycastRule(e, p.now().UTC()) })
}

// RemoveAnycast frees an anycast address; one still held needs force.
func (p *Pools) RemoveAnycast(ctx context.Context, subnet netip.Prefix, addr netip.Addr, force bool) error {
	_, err := p.edit(ctx, subnet, addr, func(e Entry) (State, bool, error) { return unanycastRule(e, force) })
	return err
}

// edit applies an operator's rule to addr and returns the record as the
// rule left it.
func (p *Pools) edit(ctx context.Context, subnet netip.Prefix, addr netip.Addr, rule func(Entry) (State, bool, error)) (*Allocation, error) {
	if err := CheckHostAddr(subnet, addr); err != nil {
		return nil, err
	}
	var now *Allocation
	err := p.change(ctx, subnet, addr, func(e Entry) (State, bool, error) {
		next, change, err := rule(e)
		now = e.Used
		if change {
			now = next.Used
		}
		return next, change, err
	})
	return now, err
}

// change applies rule to addr's current entry as one compare-and-swap,
// re-reading and re-applying after a lost race. After a transient error
// it reads the entry again (within ctx, paced by a retrier) and asks took
// whether the failed swap committed; if not, it applies the rule again. A
// counted record carries this change's op id for that question.
func (p *Pools) change(ctx context.Context, subnet netip.Prefix, addr netip.Addr, rule func(Entry) (State, bool, error), guards ...Guard) error {
	var (
		r   retrier
		e   Entry
		err error
	)
	claimed, remembered := p.claimed.LoadAndDelete(claimKey{subnet, addr})
	if remembered {
		p.remembered.Add(-1)
		e = claimed.(Entry)
	} else if e, err = p.read(ctx, &r, subnet, addr); err != nil {
		return err
	}
	op := newOpID()
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if e.Ranges == nil {
			return fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
		}
		next, change, err := rule(e)
		if (err != nil || !change) && remembered {
			// A remembered entry may be stale, which only a swap would
			// have noticed: decide nothing on it.
			remembered = false
			if e, err = p.read(ctx, &r, subnet, addr); err != nil {
				return err
			}
			continue
		}
		if err != nil || !change {
			return err
		}
		if counted(next.Used) {
			next.Used = withOp(next.Used, op)
		}
		fresh, ok, err := p.store.Swap(ctx, subnet, e, next, guards...)
		switch {
		case err == nil && ok:
			return nil
		case err == nil:
			e = fresh
			continue
		case !r.again(ctx, err):
			return fmt.Errorf("updating %s in pool %s: %w", addr, subnet, r.giveUp(err))
		}
		if fresh, err = p.read(ctx, &r, subnet, addr); err != nil {
			return err
		}
		if took(e, fresh, next, op) {
			return nil
		}
		e = fresh
	}
	return fmt.Errorf("updating %s in pool %s: %w", addr, subnet, ErrContention)
}

// read is Store.Entry, retried after transient errors.
func (p *Pools) read(ctx context.Context, r *retrier, subnet netip.Prefix, addr netip.Addr) (Entry, error) {
	e, err := retried(ctx, r, func() (Entry, error) { return p.store.Entry(ctx, subnet, addr) })
	if err != nil {
		return e, fmt.Errorf("reading %s in pool %s: %w", addr, subnet, err)
	}
	return e, nil
}
