package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/pool"
)

const (
	// seedBatch addresses at most go into one transaction: one put each,
	// within etcd's default --max-txn-ops of 128 (which bounds the
	// compares, the Then ops and the Else ops each on its own).
	seedBatch = 128
	// seedRuns bounds the runs of consecutive addresses in one
	// transaction: two compares each (no free key, no used key in the
	// run's key range) and one for the pool's existence make 127.
	seedRuns = 63
	// seedChunk addresses are read at once before writing: the keys of a
	// chunk form one key range per directory, so one read-only round trip
	// says which of them are still missing. An idempotent re-run then costs
	// reads only, and no etcd consensus write.
	seedChunk = 4096
	// seedWorkers chunks are seeded at once, one write each in flight:
	// enough to hide the round trip, few enough not to starve live
	// allocations.
	seedWorkers = 8
	// seedAttempts bounds the transactions of one batch lost to concurrent
	// writers (another seeding, a pool being removed).
	seedAttempts = 8
)

// Seed adds to the free set every address of set that is neither free nor
// used.
//
// set is walked in chunks of consecutive addresses, never materialised:
// a read-only transaction lists the chunk's free and used keys, and only
// the runs of missing addresses are written. Each write is one transaction
// that puts its runs into free/ only if the pool exists and no key of
// either directory lies in any run's key range (a range compare, so two
// compares per run rather than per address); on failure its Else reads
// those key ranges back and the batch shrinks to what is still missing. A
// used address is never touched, so seeding may run while the pool is in
// use, and twice at once.
func (s *Store) Seed(ctx context.Context, subnet netip.Prefix, set *netipx.IPSet, progress func(done, total uint64)) (uint64, error) {
	total := pool.SetSize(set)
	chunks := make(chan netipx.IPRange)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg          sync.WaitGroup
		mu          sync.Mutex // guards the rest and serialises progress
		added, done uint64
		firstErr    error
	)
	report := func(n uint64) {
		if progress == nil || n == 0 {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		done += n
		progress(done, total)
	}
	for range seedWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range chunks {
				n, err := s.seedChunk(ctx, subnet, c, report)
				mu.Lock()
				added += n
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	func() {
		defer close(chunks)
		for c := range pool.Chunks(set, seedChunk) {
			select {
			case chunks <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return added, firstErr
}

// seedChunk seeds the missing addresses of the consecutive addresses c,
// reporting each part once it is settled.
func (s *Store) seedChunk(ctx context.Context, subnet netip.Prefix, c netipx.IPRange, report func(n uint64)) (uint64, error) {
	first, last := c.From(), c.To()
	// Read-only: etcd answers it without a consensus write.
	r, err := s.cli.Txn(ctx).Then(s.seedReads(subnet, []netipx.IPRange{c})...).Commit()
	if err != nil {
		return 0, fmt.Errorf("seeding %s-%s: %w", first, last, err)
	}
	missing, err := s.seedMissing(subnet, []netipx.IPRange{c}, r)
	if err != nil {
		return 0, err
	}
	report(pool.RangeSize(c) - runsSize(missing))
	var added uint64
	for _, b := range packRuns(missing) {
		n, err := s.seedBatch(ctx, subnet, b, 0)
		added += n
		if err != nil {
			return added, err
		}
		report(runsSize(b))
	}
	return added, nil
}

// seedBatch puts the addresses of runs into free/ if none of them is free
// or used yet and the pool exists, retrying with what is still missing
// when another writer got there first.
func (s *Store) seedBatch(ctx context.Context, subnet netip.Prefix, runs []netipx.IPRange, attempt int) (uint64, error) {
	first, last := runs[0].From(), runs[len(runs)-1].To()
	if attempt == seedAttempts {
		return 0, fmt.Errorf("seeding %s-%s: %w", first, last, pool.ErrContention)
	}
	// A pool removed meanwhile (`ipamctl pool rm`) must not come back as
	// orphaned free keys.
	cmps := make([]clientv3.Cmp, 0, 2*len(runs)+1)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.k.meta(subnet)), ">", 0))
	puts := make([]clientv3.Op, 0, runsSize(runs))
	for _, run := range runs {
		freeEnd, usedEnd := s.k.free(subnet, run.To())+"\x00", s.k.used(subnet, run.To())+"\x00"
		cmps = append(cmps,
			clientv3.Compare(clientv3.CreateRevision(s.k.free(subnet, run.From())), "=", 0).WithRange(freeEnd),
			clientv3.Compare(clientv3.CreateRevision(s.k.used(subnet, run.From())), "=", 0).WithRange(usedEnd))
		for a := run.From(); ; a = a.Next() {
			puts = append(puts, clientv3.OpPut(s.k.free(subnet, a), ""))
			if a == run.To() {
				break
			}
		}
	}
	r, err := s.cli.Txn(ctx).If(cmps...).Then(puts...).Else(s.seedReads(subnet, runs)...).Commit()
	if err != nil {
		return 0, fmt.Errorf("seeding %s-%s: %w", first, last, err)
	}
	if r.Succeeded {
		return uint64(len(puts)), nil
	}
	missing, err := s.seedMissing(subnet, runs, r)
	if err != nil {
		return 0, err
	}
	var added uint64
	for _, b := range packRuns(missing) { // more runs than before, perhaps more than one batch holds
		n, err := s.seedBatch(ctx, subnet, b, attempt+1)
		added += n
		if err != nil {
			return added, err
		}
	}
	return added, nil
}

// seedReads reads the free and used keys of every run, and whether the
// pool exists.
func (s *Store) seedReads(subnet netip.Prefix, runs []netipx.IPRange) []clientv3.Op {
	ops := make([]clientv3.Op, 0, 2*len(runs)+1)
	for _, run := range runs {
		ops = append(ops,
			clientv3.OpGet(s.k.free(subnet, run.From()), clientv3.WithRange(s.k.free(subnet, run.To())+"\x00"), clientv3.WithKeysOnly()),
			clientv3.OpGet(s.k.used(subnet, run.From()), clientv3.WithRange(s.k.used(subnet, run.To())+"\x00"), clientv3.WithKeysOnly()))
	}
	return append(ops, clientv3.OpGet(s.k.meta(subnet), clientv3.WithCountOnly()))
}

// seedMissing returns the addresses of runs that r, the answer to
// seedReads(runs), found neither free nor used, as runs.
func (s *Store) seedMissing(subnet netip.Prefix, runs []netipx.IPRange, r *clientv3.TxnResponse) ([]netipx.IPRange, error) {
	if r.Responses[len(r.Responses)-1].GetResponseRange().Count == 0 {
		return nil, fmt.Errorf("%w: %s (removed while seeding)", pool.ErrUnknownPool, subnet)
	}
	var missing []netipx.IPRange
	for i, run := range runs {
		var present []netip.Addr
		for _, resp := range r.Responses[2*i : 2*i+2] {
			for _, kv := range resp.GetResponseRange().Kvs {
				a, err := parseAddrKey(string(kv.Key))
				if err != nil {
					return nil, err
				}
				present = append(present, a)
			}
		}
		missing = append(missing, gaps(run, present)...)
	}
	return missing, nil
}

// gaps returns the addresses of r not in present (addresses within r, in
// any order, duplicates allowed) as runs in address order.
func gaps(r netipx.IPRange, present []netip.Addr) []netipx.IPRange {
	slices.SortFunc(present, netip.Addr.Compare)
	var out []netipx.IPRange
	from := r.From()
	for _, a := range present {
		if a.Less(from) {
			continue // a duplicate, or free and used both
		}
		if from.Less(a) {
			out = append(out, netipx.IPRangeFrom(from, a.Prev()))
		}
		if a == r.To() {
			return out
		}
		from = a.Next()
	}
	return append(out, netipx.IPRangeFrom(from, r.To()))
}

// packRuns cuts runs into batches of at most seedBatch addresses and
// seedRuns runs, splitting runs longer than a batch.
func packRuns(runs []netipx.IPRange) [][]netipx.IPRange {
	var (
		out   [][]netipx.IPRange
		batch []netipx.IPRange
		size  uint64
	)
	for _, run := range runs {
		for {
			if len(batch) == seedRuns || size == seedBatch {
				out, batch, size = append(out, batch), nil, 0
			}
			n := min(pool.RangeSize(run), seedBatch-size)
			to := pool.AddrAt(run, n-1)
			batch, size = append(batch, netipx.IPRangeFrom(run.From(), to)), size+n
			if to == run.To() {
				break
			}
			run = netipx.IPRangeFrom(to.Next(), run.To())
		}
	}
	if len(batch) > 0 {
		out = append(out, batch)
	}
	return out
}

func runsSize(runs []netipx.IPRange) uint64 {
	var n uint64
	for _, r := range runs {
		n += pool.RangeSize(r)
	}
	return n
}
