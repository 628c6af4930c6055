package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/pool"
)

const (
	// seedBatch addresses go into one transaction: two compares each
	// (neither free nor used) and one for the pool's existence stay within
	// etcd's default limit of 128 per txn.
	seedBatch = 63
	// seedWorkers transactions are in flight at once: enough to hide the
	// round trip, few enough not to starve live allocations.
	seedWorkers = 8
)

// Seed adds to the free set every address of set that is neither free nor
// used. Each batch is one transaction that only succeeds if all its
// addresses are absent from both; on failure its Else reads which are
// present, and the batch shrinks to the rest. A used address is never
// touched, so seeding may run while the pool is in use, and twice at once.
func (s *Store) Seed(ctx context.Context, subnet netip.Prefix, set *netipx.IPSet, progress func(done, total uint64)) (uint64, error) {
	total := pool.SetSize(set)
	batches := make(chan []netip.Addr)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		added, done atomic.Uint64
		wg          sync.WaitGroup
		mu          sync.Mutex
		firstErr    error
	)
	for range seedWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range batches {
				n, err := s.seedBatch(ctx, subnet, batch)
				added.Add(n)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				if progress != nil {
					progress(done.Add(uint64(len(batch))), total)
				}
				mu.Unlock()
			}
		}()
	}
	func() {
		defer close(batches)
		for _, r := range set.Ranges() {
			for a := r.From(); a.IsValid() && !r.To().Less(a); {
				batch := make([]netip.Addr, 0, seedBatch)
				for ; a.IsValid() && !r.To().Less(a) && len(batch) < seedBatch; a = a.Next() {
					batch = append(batch, a)
				}
				select {
				case batches <- batch:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return added.Load(), firstErr
}

// seedBatch seeds consecutive addresses, so their keys form one key range.
func (s *Store) seedBatch(ctx context.Context, subnet netip.Prefix, batch []netip.Addr) (uint64, error) {
	first, last := batch[0], batch[len(batch)-1]
	meta := s.k.meta(subnet)
	readBack := []clientv3.Op{
		clientv3.OpGet(s.k.free(subnet, first), clientv3.WithRange(s.k.free(subnet, last)+"\x00"), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.used(subnet, first), clientv3.WithRange(s.k.used(subnet, last)+"\x00"), clientv3.WithKeysOnly()),
		clientv3.OpGet(meta, clientv3.WithCountOnly()),
	}
	for attempt := 0; attempt < 8 && len(batch) > 0; attempt++ {
		// A pool removed meanwhile (`ipamctl pool rm`) must not come back
		// as orphaned free keys.
		cmps := make([]clientv3.Cmp, 0, 2*len(batch)+1)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(meta), ">", 0))
		puts := make([]clientv3.Op, 0, len(batch))
		for _, a := range batch {
			free, used := s.k.free(subnet, a), s.k.used(subnet, a)
			cmps = append(cmps,
				clientv3.Compare(clientv3.CreateRevision(free), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(used), "=", 0))
			puts = append(puts, clientv3.OpPut(free, ""))
		}
		r, err := s.cli.Txn(ctx).If(cmps...).Then(puts...).Else(readBack...).Commit()
		if err != nil {
			return 0, fmt.Errorf("seeding %s-%s: %w", first, last, err)
		}
		if r.Succeeded {
			return uint64(len(batch)), nil
		}
		if r.Responses[2].GetResponseRange().Count == 0 {
			return 0, fmt.Errorf("%w: %s (removed while seeding)", pool.ErrUnknownPool, subnet)
		}
		present := map[netip.Addr]bool{}
		for _, resp := range r.Responses[:2] {
			for _, kv := range resp.GetResponseRange().Kvs {
				a, err := parseAddrKey(string(kv.Key))
				if err != nil {
					return 0, err
				}
				present[a] = true
			}
		}
		rest := batch[:0:0]
		for _, a := range batch {
			if !present[a] {
				rest = append(rest, a)
			}
		}
		batch = rest
	}
	if len(batch) > 0 {
		return 0, fmt.Errorf("seeding %s-%s: %w", first, last, pool.ErrContention)
	}
	return 0, nil
}
