package pool

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"time"

	"go4.org/netipx"
)

// memStore is an in-memory Store with the same atomicity as etcdstore, for
// testing the rules without etcd. Revisions come from one counter, as in
// etcd, so a stale Entry is detected exactly as the real store would. Its
// clock times the reuse delay, as etcd's leader times its leases: the
// Pools' clocks play no part.
type memStore struct {
	mu    sync.Mutex
	rev   int64
	pools map[netip.Prefix]*memPool
	clock func() time.Time
}

type memPool struct {
	meta   Meta
	free   map[netip.Addr]int64
	used   map[netip.Addr]memUsed
	refs   map[string]int
	owners map[string]netip.Addr    // Allocation.Owner of container entries
	bound  map[string]netip.Addr    // sticky names
	after  map[netip.Addr]time.Time // addresses in their reuse delay, until when (the store's clock)
	view   *FreeSet                 // FreeSet's copy, once asked for
}

// stickyName mirrors etcdstore's binding key: the record's sticky name.
func stickyName(a *Allocation) string {
	if a == nil {
		return ""
	}
	return a.Sticky
}

type memUsed struct {
	a   Allocation
	rev int64
}

var _ Store = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{pools: map[netip.Prefix]*memPool{}, clock: time.Now} }

// expire ends the reuse delays that are over, as etcd deletes the delay
// keys of an expired lease.
func (s *memStore) expire(p *memPool) {
	now := s.clock()
	for a, until := range p.after {
		if !now.Before(until) {
			delete(p.after, a)
			if p.view != nil {
				p.view.Undelay(a)
			}
		}
	}
}

func (s *memStore) NextReuse(_ context.Context, subnet netip.Prefix) (time.Duration, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return 0, false, nil
	}
	s.expire(p)
	var first time.Time
	for _, until := range p.after {
		if first.IsZero() || until.Before(first) {
			first = until
		}
	}
	return first.Sub(s.clock()), !first.IsZero(), nil
}

func (s *memStore) Meta(_ context.Context, subnet netip.Prefix) (Meta, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return Meta{}, false, nil
	}
	return p.meta, true, nil
}

func (s *memStore) CreateMeta(_ context.Context, m Meta) (Meta, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pools[m.Subnet]; ok {
		return p.meta, false, nil
	}
	for other := range s.pools {
		if other.Overlaps(m.Subnet) {
			return Meta{}, false, ErrOverlap
		}
	}
	s.rev++
	m.Rev = s.rev
	s.pools[m.Subnet] = &memPool{meta: m, free: map[netip.Addr]int64{}, used: map[netip.Addr]memUsed{}, refs: map[string]int{}, owners: map[string]netip.Addr{}, bound: map[string]netip.Addr{}, after: map[netip.Addr]time.Time{}}
	return m, true, nil
}

func (s *memStore) UpdateMeta(_ context.Context, old, next Meta) (Meta, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[old.Subnet]
	if !ok {
		return Meta{}, false, nil
	}
	if p.meta.Rev != old.Rev {
		return p.meta, false, nil
	}
	s.rev++
	next.Rev = s.rev
	p.meta = next
	return next, true, nil
}

func (s *memStore) Seed(_ context.Context, subnet netip.Prefix, set *netipx.IPSet, _ func(done, total uint64)) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[subnet]
	var added uint64
	for _, r := range set.Ranges() {
		for a := r.From(); a.IsValid() && !r.To().Less(a); a = a.Next() {
			if _, free := p.free[a]; free {
				continue
			}
			if _, used := p.used[a]; used {
				continue
			}
			s.rev++
			p.addFree(a, s.rev)
			added++
		}
	}
	return added, nil
}

func (s *memStore) Claim(_ context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation, takeDelayed bool) (Claim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return Claim{NoPool: true}, nil
	}
	s.expire(p)
	owner := a.Owner()
	existing, holds := p.owners[owner]
	_, free := p.free[addr]
	_, delayed := p.after[addr]
	claimable := free && (takeDelayed || !delayed)
	bound, isBound := p.bound[a.Sticky]
	if a.Sticky == "" {
		isBound = false
	}
	if claimable && !holds && !isBound {
		if _, used := p.used[addr]; !used {
			s.rev++
			p.dropFree(addr)
			p.used[addr] = memUsed{a: cloneAlloc(a), rev: s.rev}
			if owner != "" {
				p.owners[owner] = addr
			}
			if a.Sticky != "" {
				p.bound[a.Sticky] = addr
			}
			return Claim{Taken: true, Version: Version{Used: s.rev, Meta: p.meta.Rev}}, nil
		}
	}
	var c Claim
	if holds {
		c.Existing = existing
	}
	if isBound {
		c.Bound = bound
	}
	c.Delayed = free && !claimable
	if u, used := p.used[addr]; used {
		h := cloneAlloc(u.a)
		c.Holder = &h
	}
	return c, nil
}

// FreeSet keeps one copy per pool, updated with every change: a watch
// with no lag.
func (s *memStore) FreeSet(_ context.Context, subnet netip.Prefix) (*FreeSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return nil, ErrUnknownPool
	}
	if p.view == nil {
		p.view = p.loadView()
	}
	s.expire(p)
	return p.view, nil
}

func (p *memPool) loadView() *FreeSet {
	f := NewFreeSet(p.meta.Ranges)
	for a := range p.free {
		f.Add(a)
	}
	for a := range p.after {
		f.Delay(a)
	}
	return f
}

// addFree, delay and dropFree change the free set and its copy together.
// A claim ends the address's delay, as etcdstore's deletes its delay key.
func (p *memPool) addFree(addr netip.Addr, rev int64) {
	p.free[addr] = rev
	if p.view != nil && !p.view.Add(addr) {
		p.view.Replace(p.loadView()) // the ranges grew
	}
}

func (p *memPool) delay(addr netip.Addr, until time.Time) {
	p.after[addr] = until
	if p.view != nil {
		p.view.Delay(addr)
	}
}

func (p *memPool) dropFree(addr netip.Addr) {
	delete(p.free, addr)
	if p.view != nil {
		p.view.Remove(addr)
	}
	if _, delayed := p.after[addr]; delayed {
		delete(p.after, addr)
		if p.view != nil {
			p.view.Undelay(addr)
		}
	}
}

func (s *memStore) Entry(_ context.Context, subnet netip.Prefix, addr netip.Addr) (Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entry(subnet, addr), nil
}

func (s *memStore) entry(subnet netip.Prefix, addr netip.Addr) Entry {
	e := Entry{Addr: addr}
	p, ok := s.pools[subnet]
	if !ok {
		return e
	}
	e.Ranges, e.ReuseDelay, e.Version.Meta = p.meta.Ranges, p.meta.ReuseDelay, p.meta.Rev
	if rev, free := p.free[addr]; free {
		e.Free, e.Version.Free = true, rev
	}
	if u, used := p.used[addr]; used {
		a := cloneAlloc(u.a)
		e.Used, e.Version.Used = &a, u.rev
	}
	return e
}

// memGuard is the in-memory store's Guard: it holds while it returns true.
type memGuard func() bool

func (s *memStore) Swap(_ context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (Entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fresh := s.entry(subnet, cur.Addr); fresh.Version != cur.Version {
		return fresh, false, nil
	}
	for _, g := range guards {
		if !g.(memGuard)() {
			return cur, false, ErrGuard
		}
	}
	p := s.pools[subnet]
	if was, now := cur.Used.Owner(), next.Used.Owner(); was != now && now != "" {
		if held, ok := p.owners[now]; ok {
			return cur, false, fmt.Errorf("%w: endpoint %s already holds %s", ErrUnavailable, now, held)
		}
	}
	s.rev++
	if next.Free {
		if _, free := p.free[cur.Addr]; !free {
			if next.Delay > 0 {
				p.delay(cur.Addr, s.clock().Add(next.Delay))
			}
			p.addFree(cur.Addr, s.rev)
		}
	} else {
		p.dropFree(cur.Addr)
	}
	if next.Used != nil {
		p.used[cur.Addr] = memUsed{a: cloneAlloc(*next.Used), rev: s.rev}
	} else {
		delete(p.used, cur.Addr)
	}
	if was, now := cur.Used.Owner(), next.Used.Owner(); was != now {
		delete(p.owners, was)
		if now != "" {
			p.owners[now] = cur.Addr
		}
	}
	if was, now := stickyName(cur.Used), stickyName(next.Used); was != now {
		delete(p.bound, was)
		if now != "" {
			p.bound[now] = cur.Addr
		}
	}
	return Entry{}, true, nil
}

func (s *memStore) Binding(_ context.Context, subnet netip.Prefix, name string) (netip.Addr, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return netip.Addr{}, false, nil
	}
	a, ok := p.bound[name]
	return a, ok, nil
}

func (s *memStore) Owned(_ context.Context, subnet netip.Prefix, owner string) (netip.Addr, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.pools[subnet].owners[owner]
	return a, ok, nil
}

func (s *memStore) AddRef(_ context.Context, subnet netip.Prefix, host string, delta int, _ string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[subnet]
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
	}
	p.refs[host] = max(p.refs[host]+delta, 0)
	return p.refs[host], nil
}

func cloneAlloc(a Allocation) Allocation {
	a.Holders = maps.Clone(a.Holders)
	return a
}
