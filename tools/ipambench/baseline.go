package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The baseline is what any etcd-backed allocator must pay at the least: per address one durable
// compare-and-swap that takes it (free → used, with a record of our record's size) and one that
// gives it back. It lives in a key space of its own, with no coupling to our key layout, and has
// no conflicts: each worker owns a disjoint list of addresses.

const (
	// baseBatch keys per seeding transaction: etcd's default --max-txn-ops is 128 and a move
	// from free to used is two ops.
	baseBatch    = 128
	baseInFlight = 8 // seeding transactions in flight, as our seeding does
)

// baseRecord is as long as the record we keep for a container's address (kind, host, mac, since:
// about 130 bytes of JSON), so that both write the same bytes per claim.
var baseRecord = `{"kind":"container","host":"baseline","mac":"02:42:00:00:00:00","endpoint":"ipambench","since":"2026-01-01T00:00:00.000000000Z"}`

// baseSpace is one pool's baseline twin: keys free/<n> and used/<n>, n < size.
type baseSpace struct {
	cli    *clientv3.Client
	prefix string
	size   int
	perm   []int32 // addresses in a random order: perm[:used] are used, the rest free
	used   int
}

func newBaseSpace(cli *clientv3.Client, prefix string, size int) *baseSpace {
	b := &baseSpace{cli: cli, prefix: prefix, size: size, perm: make([]int32, size)}
	for i, v := range rand.Perm(size) {
		b.perm[i] = int32(v)
	}
	return b
}

// The numbers are zero-padded, as our address keys are, so key order is number order.
func (b *baseSpace) freeKey(n int32) string { return fmt.Sprintf("%sfree/%08d", b.prefix, n) }
func (b *baseSpace) usedKey(n int32) string { return fmt.Sprintf("%sused/%08d", b.prefix, n) }

// seed puts every address into free/ with bare puts, baseBatch per transaction, baseInFlight
// in flight: init-range's baseline (no compares, no pool record). It returns the time it took.
func (b *baseSpace) seed(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	err := b.batches(ctx, 0, b.size, baseBatch, func(n int32) []clientv3.Op {
		return []clientv3.Op{clientv3.OpPut(b.freeKey(n), "")}
	})
	if err != nil {
		return 0, fmt.Errorf("seeding the baseline %s: %w", b.prefix, err)
	}
	return time.Since(start), nil
}

// fill moves addresses from free to used until want are used.
func (b *baseSpace) fill(ctx context.Context, want int) error {
	if want <= b.used {
		return nil
	}
	err := b.batches(ctx, b.used, want, baseBatch/2, func(n int32) []clientv3.Op {
		return []clientv3.Op{clientv3.OpDelete(b.freeKey(n)), clientv3.OpPut(b.usedKey(n), baseRecord)}
	})
	if err != nil {
		return fmt.Errorf("filling the baseline %s: %w", b.prefix, err)
	}
	b.used = want
	return nil
}

// batches commits ops(perm[i]) for i in [from, to), per transactions of per addresses, several
// in flight.
func (b *baseSpace) batches(ctx context.Context, from, to, per int, ops func(n int32) []clientv3.Op) error {
	work := make(chan [2]int)
	errs := make(chan error, baseInFlight)
	var wg sync.WaitGroup
	for range baseInFlight {
		wg.Go(func() {
			for span := range work {
				var batch []clientv3.Op
				for _, n := range b.perm[span[0]:span[1]] {
					batch = append(batch, ops(n)...)
				}
				cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
				_, err := b.cli.Txn(cctx).Then(batch...).Commit()
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
feed:
	for i := from; i < to; i += per {
		select {
		case work <- [2]int{i, min(i+per, to)}:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// baseLoad runs the baseline's cycles: worker w claims and releases the addresses of its own
// list in turn.
type baseLoad struct {
	b     *baseSpace
	lists [][]int32
	pos   []int
}

// load splits the free addresses among workers; fewer workers than asked when there are fewer
// free addresses than that.
func (b *baseSpace) load(workers int) *baseLoad {
	free := b.perm[b.used:]
	workers = min(workers, len(free))
	l := &baseLoad{b: b, lists: make([][]int32, workers), pos: make([]int, workers)}
	for i, n := range free {
		l.lists[i%workers] = append(l.lists[i%workers], n)
	}
	return l
}

func (l *baseLoad) workers() int { return len(l.lists) }

// op claims the worker's next address and releases it; lat is the claim's.
func (l *baseLoad) op(ctx context.Context, w int) (lat time.Duration, dup bool, err error) {
	list := l.lists[w]
	n := list[l.pos[w]%len(list)]
	l.pos[w]++
	start := time.Now()
	if err := l.b.claim(ctx, n); err != nil {
		return time.Since(start), false, err
	}
	lat = time.Since(start)
	return lat, false, l.b.release(ctx, n)
}

// claim moves address n from free to used in one compare-guarded transaction.
func (b *baseSpace) claim(ctx context.Context, n int32) error {
	free, used := b.freeKey(n), b.usedKey(n)
	cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	r, err := b.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(free), ">", 0), clientv3.Compare(clientv3.CreateRevision(used), "=", 0)).
		Then(clientv3.OpDelete(free), clientv3.OpPut(used, baseRecord)).
		Commit()
	if err != nil {
		return fmt.Errorf("baseline claim of %s: %w", free, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("baseline claim of %s: compare failed (the address is not free)", free)
	}
	return nil
}

// release moves address n back from used to free.
func (b *baseSpace) release(ctx context.Context, n int32) error {
	free, used := b.freeKey(n), b.usedKey(n)
	cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	r, err := b.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(used), ">", 0)).
		Then(clientv3.OpDelete(used), clientv3.OpPut(free, "")).
		Commit()
	if err != nil {
		return fmt.Errorf("baseline release of %s: %w", used, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("baseline release of %s: compare failed (the address is not used)", used)
	}
	return nil
}
