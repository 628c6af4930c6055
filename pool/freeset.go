package pool

import (
	"container/heap"
	"math/bits"
	"net/netip"
	"sort"
	"sync"
	"time"

	"go4.org/netipx"
)

// FreeSet is a local copy of one pool's free set, kept current by the
// store (etcdstore feeds it from a watch), so that picking an address to
// claim costs no round trip. It only suggests: the claim's compare in the
// store decides, so a stale copy costs a retry, never a duplicate.
//
// Addresses are bits over an index space, the pool's seeded ranges: a
// million addresses take 128 KiB. Free addresses still in their reuse
// delay are kept aside until they are due.
type FreeSet struct {
	mu      sync.Mutex
	ranges  []netipx.IPRange
	offsets []uint64 // offsets[i] is the index of ranges[i].From()
	// ready has bit i set when address i is free, past its reuse delay,
	// and not being claimed by a request of this process.
	ready   []uint64
	nready  uint64
	size    uint64           // addresses in ranges
	delayed map[uint64]int64 // index → reusable after, Unix ms
	due     dueHeap          // delayed, soonest first; entries gone from delayed are skipped
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
	f.delayed = map[uint64]int64{}
	f.due = nil
}

// Replace makes f a copy of next, which the caller then drops: a reload
// swaps in a freshly read set while requests keep using f.
func (f *FreeSet) Replace(next *FreeSet) {
	next.mu.Lock()
	defer next.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ranges, f.offsets, f.ready, f.size, f.nready, f.delayed, f.due = next.ranges, next.offsets, next.ready, next.size, next.nready, next.delayed, next.due
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

// Add records a as free, claimable from reusableAfter on (zero: at once;
// Take decides when a time has come). It reports false when a lies outside
// the index space: the pool's ranges grew, and the caller should reload.
func (f *FreeSet) Add(a netip.Addr, reusableAfter time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx, ok := f.index(a)
	if !ok {
		return false
	}
	delete(f.delayed, idx)
	if reusableAfter.IsZero() {
		f.setReady(idx)
		return true
	}
	f.clearReady(idx)
	until := reusableAfter.UnixMilli()
	f.delayed[idx] = until
	heap.Push(&f.due, dueEntry{until: until, idx: idx})
	return true
}

// Remove records that a is not free.
func (f *FreeSet) Remove(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if idx, ok := f.index(a); ok {
		f.clearReady(idx)
		delete(f.delayed, idx)
	}
}

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
func (f *FreeSet) Take(within netipx.IPRange, now time.Time, randN func(uint64) uint64) (a netip.Addr, waiting int, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.promote(now.UnixMilli())
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
	for idx := range f.delayed {
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

// promote makes delayed addresses whose time has come ready.
func (f *FreeSet) promote(nowMs int64) {
	for len(f.due) > 0 && f.due[0].until <= nowMs {
		e := heap.Pop(&f.due).(dueEntry)
		if until, ok := f.delayed[e.idx]; ok && until == e.until {
			delete(f.delayed, e.idx)
			f.setReady(e.idx)
		}
	}
}

// Counts reports how many addresses are ready and how many are in their
// reuse delay.
func (f *FreeSet) Counts() (ready, waiting uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nready, uint64(len(f.delayed))
}

type dueEntry struct {
	until int64
	idx   uint64
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].until < h[j].until }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
