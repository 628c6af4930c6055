package pool

import (
	"math/bits"
	"net/netip"
	"sort"
	"sync"

	"go4.org/netipx"
)

// FreeSet is a local copy of one pool's free set, kept current by the
// store (etcdstore feeds it from a watch), so that picking an address to
// claim costs no round trip. It only suggests: the claim's compare in the
// store decides, so a stale copy costs a retry, never a duplicate.
//
// Addresses are bits over an index space, the pool's seeded ranges: a
// million addresses take 128 KiB. Addresses in their reuse delay are kept
// aside until the store says the delay is over (Undelay): the store times
// it, not this host's clock.
type FreeSet struct {
	mu      sync.Mutex
	ranges  []netipx.IPRange
	offsets []uint64 // offsets[i] is the index of ranges[i].From()
	// ready has bit i set when address i is free, out of its reuse delay,
	// and not being claimed by a request of this process.
	ready  []uint64
	nready uint64
	size   uint64 // addresses in ranges
	// delayed holds the addresses in their reuse delay, each with whether
	// it is free: the store reports the two facts separately, in either
	// order.
	delayed  map[uint64]bool
	ndelayed uint64 // delayed and free
}

// Size is how many addresses the set's index space holds: the pool's
// seeded ranges.
func (f *FreeSet) Size() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

// NewFreeSet returns an empty set whose addresses may lie in space.
func NewFreeSet(space *netipx.IPSet) *FreeSet {
	f := &FreeSet{}
	f.reset(space)
	return f
}

func (f *FreeSet) reset(space *netipx.IPSet) {
	f.ranges = space.Ranges()
	f.offsets = make([]uint64, len(f.ranges))
	var size uint64
	for i, r := range f.ranges {
		f.offsets[i] = size
		size += RangeSize(r)
	}
	f.ready = make([]uint64, (size+63)/64)
	f.size, f.nready = size, 0
	f.delayed, f.ndelayed = map[uint64]bool{}, 0
}

// Replace makes f a copy of next, which the caller then drops: a reload
// swaps in a freshly read set while requests keep using f.
func (f *FreeSet) Replace(next *FreeSet) {
	next.mu.Lock()
	defer next.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ranges, f.offsets, f.ready, f.size, f.nready, f.delayed, f.ndelayed = next.ranges, next.offsets, next.ready, next.size, next.nready, next.delayed, next.ndelayed
}

// index finds a in the index space.
func (f *FreeSet) index(a netip.Addr) (uint64, bool) {
	i := sort.Search(len(f.ranges), func(i int) bool { return !f.ranges[i].To().Less(a) })
	if i == len(f.ranges) || a.Less(f.ranges[i].From()) {
		return 0, false
	}
	return f.offsets[i] + offset(f.ranges[i].From(), a), true
}

// offset is a−from for addresses less than 2^64 apart: the low words'
// difference, modulo 2^64, is then exact.
func offset(from, a netip.Addr) uint64 {
	_, x := split128(from)
	_, y := split128(a)
	return y - x
}

func (f *FreeSet) addr(idx uint64) netip.Addr {
	i := sort.Search(len(f.offsets), func(i int) bool { return f.offsets[i] > idx }) - 1
	return AddrAt(f.ranges[i], idx-f.offsets[i])
}

// Add records a as free. It reports false when a lies outside the index
// space: the pool's ranges grew, and the caller should reload.
func (f *FreeSet) Add(a netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx, ok := f.index(a)
	if !ok {
		return false
	}
	switch free, delayed := f.delayed[idx]; {
	case !delayed:
		f.setReady(idx)
	case !free:
		f.delayed[idx] = true
		f.ndelayed++
	}
	return true
}

// Remove records that a is not free.
func (f *FreeSet) Remove(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if idx, ok := f.index(a); ok {
		f.clearReady(idx)
		if f.delayed[idx] {
			f.delayed[idx] = false
			f.ndelayed--
		}
	}
}

// Delay records that a is in its reuse delay: automatic allocation skips
// it until Undelay, whether it is free now or becomes free meanwhile.
// Addresses outside the index space are ignored, as their free keys are.
func (f *FreeSet) Delay(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx, ok := f.index(a)
	if !ok {
		return
	}
	if _, delayed := f.delayed[idx]; delayed {
		return
	}
	free := f.isReady(idx)
	f.clearReady(idx)
	f.delayed[idx] = free
	if free {
		f.ndelayed++
	}
}

// Undelay records the end of a's reuse delay.
func (f *FreeSet) Undelay(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx, ok := f.index(a)
	if !ok {
		return
	}
	free, delayed := f.delayed[idx]
	if !delayed {
		return
	}
	delete(f.delayed, idx)
	if free {
		f.ndelayed--
		f.setReady(idx)
	}
}

func (f *FreeSet) isReady(idx uint64) bool { return f.ready[idx/64]&(1<<(idx%64)) != 0 }

func (f *FreeSet) setReady(idx uint64) {
	w, b := idx/64, uint64(1)<<(idx%64)
	if f.ready[w]&b == 0 {
		f.ready[w] |= b
		f.nready++
	}
}

func (f *FreeSet) clearReady(idx uint64) {
	w, b := idx/64, uint64(1)<<(idx%64)
	if f.ready[w]&b != 0 {
		f.ready[w] &^= b
		f.nready--
	}
}

// Take picks a free address of within, starting at a random point, and
// marks it as being claimed so that concurrent requests of this process
// pick others. The caller claims it in the store; after a failure that may
// not have reached the store, Add puts it back. With none ready, waiting
// counts those of within still in their reuse delay. An exhausted pool is
// answered without scanning.
func (f *FreeSet) Take(within netipx.IPRange, randN func(uint64) uint64) (a netip.Addr, waiting int, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	spans, total := f.spans(within)
	if f.nready > 0 && total > 0 {
		pos := randN(total)
		// From the random point to the end, then from the start.
		for pass := 0; pass < 2; pass++ {
			for _, s := range spans {
				lo, hi := s.lo, s.hi
				if pass == 0 {
					if pos >= hi-lo {
						pos -= hi - lo
						continue
					}
					lo += pos
					pos = 0
				}
				if idx, found := f.nextReady(lo, hi); found {
					f.clearReady(idx)
					return f.addr(idx), 0, true
				}
			}
		}
	}
	for idx, free := range f.delayed {
		if !free {
			continue
		}
		for _, s := range spans {
			if idx >= s.lo && idx < s.hi {
				waiting++
			}
		}
	}
	return netip.Addr{}, waiting, false
}

type span struct{ lo, hi uint64 } // index interval [lo, hi)

// spans maps within onto the index space.
func (f *FreeSet) spans(within netipx.IPRange) ([]span, uint64) {
	var out []span
	var total uint64
	for i, r := range f.ranges {
		from, to := r.From(), r.To()
		if to.Less(within.From()) || within.To().Less(from) {
			continue
		}
		if from.Less(within.From()) {
			from = within.From()
		}
		if within.To().Less(to) {
			to = within.To()
		}
		lo := f.offsets[i] + offset(r.From(), from)
		hi := f.offsets[i] + offset(r.From(), to) + 1
		out = append(out, span{lo, hi})
		total += hi - lo
	}
	return out, total
}

// nextReady finds the first ready index in [lo, hi), a word at a time.
func (f *FreeSet) nextReady(lo, hi uint64) (uint64, bool) {
	for lo < hi {
		w := f.ready[lo/64] >> (lo % 64)
		if w != 0 {
			idx := lo + uint64(bits.TrailingZeros64(w))
			return idx, idx < hi
		}
		lo = (lo/64 + 1) * 64
	}
	return 0, false
}

// Counts reports how many addresses are ready and how many are in their
// reuse delay.
func (f *FreeSet) Counts() (ready, waiting uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nready, f.ndelayed
}
