package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/pool"
)

const (
	// loadPage addresses' keys are read per request when loading a free
	// set: a million-address pool loads in pages, never in one huge
	// response.
	loadPage = 10000
	// loadTimeout bounds one reload of a free set by the watcher.
	loadTimeout = 30 * time.Second
	// reloadPause spaces reloads after failures (etcd down, no leader).
	reloadPause = time.Second
	// resumePause spaces resumed watches while etcd has no leader: each
	// is cancelled again at once until an election ends.
	resumePause = 200 * time.Millisecond
)

// views holds the free-set copies of the pools this process allocates
// from, each kept current by a watch on the pool's free keys.
type views struct {
	mu sync.Mutex
	m  map[netip.Prefix]*view
}

type view struct {
	loaded chan struct{} // closed when the first load ended; then set or err is final
	set    *pool.FreeSet
	err    error
	loads  atomic.Uint64 // whole-pool reads, the first one included
}

// FreeSet returns the pool's free set, loading it and starting its watch
// on first use. The load does not end with the request that started it: a
// million-address pool may take longer to read than one request may wait,
// and the requests after it wait for the same load instead of starting over.
func (s *Store) FreeSet(ctx context.Context, subnet netip.Prefix) (*pool.FreeSet, error) {
	s.views.mu.Lock()
	if s.views.m == nil {
		s.views.m = map[netip.Prefix]*view{}
	}
	v, found := s.views.m[subnet]
	if !found {
		v = &view{loaded: make(chan struct{})}
		s.views.m[subnet] = v
	}
	s.views.mu.Unlock()
	if !found {
		go func() {
			lctx, cancel := context.WithTimeout(s.cli.Ctx(), loadTimeout)
			set, rev, err := s.loadFreeSet(lctx, subnet)
			cancel()
			v.set, v.err = set, err
			v.loads.Add(1)
			if err != nil {
				s.views.mu.Lock()
				delete(s.views.m, subnet) // the next request tries again
				s.views.mu.Unlock()
			} else {
				go s.follow(subnet, v, rev)
			}
			close(v.loaded)
		}()
	}
	select {
	case <-v.loaded:
		return v.set, v.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loadedSet is the pool's free set if this process has loaded it, or nil:
// it never starts a load nor waits for one.
func (s *Store) loadedSet(subnet netip.Prefix) *pool.FreeSet {
	s.views.mu.Lock()
	v := s.views.m[subnet]
	s.views.mu.Unlock()
	if v == nil {
		return nil
	}
	select {
	case <-v.loaded:
		if v.err == nil {
			return v.set
		}
	default:
	}
	return nil
}

// loadFreeSet reads the pool's ranges, free keys and delay keys at one
// revision.
func (s *Store) loadFreeSet(ctx context.Context, subnet netip.Prefix) (*pool.FreeSet, int64, error) {
	r, err := s.cli.Get(ctx, s.k.meta(subnet))
	if err != nil {
		return nil, 0, fmt.Errorf("reading pool %s: %w", subnet, err)
	}
	rev := r.Header.Revision
	m, ok, err := metaFrom(r.Kvs)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, rev, fmt.Errorf("%w: %s", pool.ErrUnknownPool, subnet)
	}
	set := pool.NewFreeSet(m.Ranges)
	// A page is the keys of a window of addresses (key order is address
	// order), not a limit over the directory: etcd counts every key of the
	// range it is asked for, so limited pages over a million keys would
	// each walk all the keys after them. Free keys outside the ranges are
	// not read; they can still be claimed with --ip.
	for c := range pool.Chunks(m.Ranges, loadPage) {
		page, err := s.cli.Get(ctx, s.k.free(subnet, c.From()), clientv3.WithRange(s.k.free(subnet, c.To())+"\x00"), clientv3.WithRev(rev))
		if err != nil {
			return nil, 0, fmt.Errorf("reading the free set of pool %s: %w", subnet, err)
		}
		for _, kv := range page.Kvs {
			if err := addFree(set, kv); err != nil {
				// Such a key can still be claimed with --ip; automatic
				// allocation just does not see it.
				slog.Warn("leaving a free key out of the free set", "key", string(kv.Key), "err", err)
			}
		}
	}
	delays, err := s.cli.Get(ctx, s.k.delaysDir(subnet), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithRev(rev))
	if err != nil {
		return nil, 0, fmt.Errorf("reading the reuse delays of pool %s: %w", subnet, err)
	}
	for _, kv := range delays.Kvs {
		if a, err := parseAddrKey(string(kv.Key)); err == nil {
			set.Delay(a)
		}
	}
	return set, rev, nil
}

// addFree records a free key in set; it reports errOutside when the
// address lies outside the ranges set was built for. The key's value is
// not read: an older version wrote its own clock's reuse time there.
func addFree(set *pool.FreeSet, kv *mvccpb.KeyValue) error {
	a, err := parseAddrKey(string(kv.Key))
	if err != nil {
		return err
	}
	if !set.Add(a) {
		return errOutside
	}
	return nil
}

var errOutside = errors.New("free address outside the pool's ranges")

// follow applies the pool's free-key and delay-key changes after rev to
// v's set until the client closes. A watch that etcd cancels for want of
// a leader, as every follower does in an election, resumes where it
// stopped: reloading instead would make every host read every pool at the
// moment etcd recovers (docs/PERFORMANCE.md, 1,000 hosts). Only a gap
// etcd no longer has (compaction), or a free key outside the set's ranges
// because they grew, ends in a reload.
func (s *Store) follow(subnet netip.Prefix, v *view, rev int64) {
	for s.cli.Ctx().Err() == nil {
		var resumable bool
		if rev, resumable = s.watchPool(subnet, v.set, rev); resumable {
			time.Sleep(resumePause)
			continue
		}
		for s.cli.Ctx().Err() == nil {
			ctx, cancel := context.WithTimeout(s.cli.Ctx(), loadTimeout)
			next, r, err := s.loadFreeSet(ctx, subnet)
			cancel()
			v.loads.Add(1)
			if errors.Is(err, pool.ErrUnknownPool) {
				next, err = pool.NewFreeSet(&netipx.IPSet{}), nil // removed: empty until it is created again
			}
			if err == nil {
				v.set.Replace(next)
				rev = r
				break
			}
			slog.Warn("reloading a free set", "pool", subnet, "err", err)
			time.Sleep(reloadPause)
		}
	}
}

// watchPool applies changes after rev until either watch breaks, and
// returns the revision up to which set has every change of both, and
// whether watching can resume from there. The free keys and the delay keys
// are two directories, so two watches: FreeSet takes an address's two
// facts in either order, and applying a change twice ends in the same
// state, so both resume from the one that is behind.
func (s *Store) watchPool(subnet netip.Prefix, set *pool.FreeSet, rev int64) (int64, bool) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.cli.Ctx()))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(rev + 1), clientv3.WithProgressNotify()}
	free := s.cli.Watch(ctx, s.k.freeDir(subnet), opts...)
	delays := s.cli.Watch(ctx, s.k.delaysDir(subnet), opts...)
	freeRev, delaysRev := rev, rev
	done := func(wr clientv3.WatchResponse, ok bool) (int64, bool) {
		resumable := ok && wr.CompactRevision == 0 && !errors.Is(wr.Err(), rpctypes.ErrCompacted) && s.cli.Ctx().Err() == nil
		return min(freeRev, delaysRev), resumable
	}
	for {
		select {
		case wr, ok := <-free:
			if !ok || wr.Err() != nil {
				return done(wr, ok)
			}
			if !applyFree(set, wr.Events) {
				return rev, false
			}
			freeRev = max(freeRev, watched(wr))
		case wr, ok := <-delays:
			if !ok || wr.Err() != nil {
				return done(wr, ok)
			}
			for _, ev := range wr.Events {
				if a, err := parseAddrKey(string(ev.Kv.Key)); err == nil && ev.Type == clientv3.EventTypeDelete {
					set.Undelay(a)
				} else if err == nil {
					set.Delay(a)
				}
			}
			delaysRev = max(delaysRev, watched(wr))
		}
	}
}

// watched is the revision up to which wr shows every change of its watch:
// its last event's, or, in a progress notification (sent when the watch
// is idle), the store's.
func watched(wr clientv3.WatchResponse) int64 {
	if wr.IsProgressNotify() {
		return wr.Header.Revision
	}
	if n := len(wr.Events); n > 0 {
		return wr.Events[n-1].Kv.ModRevision
	}
	return 0
}

// applyFree applies free-key events to set; false means set must be
// reloaded (its ranges grew).
func applyFree(set *pool.FreeSet, events []*clientv3.Event) bool {
	for _, ev := range events {
		if ev.Type == clientv3.EventTypeDelete {
			if a, err := parseAddrKey(string(ev.Kv.Key)); err == nil {
				set.Remove(a)
			}
			continue
		}
		if err := addFree(set, ev.Kv); err != nil {
			if !errors.Is(err, errOutside) {
				slog.Warn("ignoring a malformed free key", "key", string(ev.Kv.Key), "err", err)
				continue
			}
			return false
		}
	}
	return true
}

// CopyCount is what this process's copy says of one pool.
type CopyCount struct {
	Size, Free, Delayed uint64 // Free excludes those in their reuse delay
	Loads               uint64 // whole-pool reads since the process started
}

// CopyCounts reports the pools this process allocates from, as their free-set
// copies see them: no etcd call, so a metrics scrape costs etcd nothing.
func (s *Store) CopyCounts() map[netip.Prefix]CopyCount {
	s.views.mu.Lock()
	defer s.views.mu.Unlock()
	out := make(map[netip.Prefix]CopyCount, len(s.views.m))
	for subnet, v := range s.views.m {
		select {
		case <-v.loaded:
		default:
			continue // still loading
		}
		if v.err == nil {
			ready, waiting := v.set.Counts()
			out[subnet] = CopyCount{Size: v.set.Size(), Free: ready, Delayed: waiting, Loads: v.loads.Load()}
		}
	}
	return out
}
