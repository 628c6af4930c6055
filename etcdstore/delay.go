package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The reuse delay is timed by etcd's leader, not by any host's clock: a
// released container address gets a key under delays/ bound to a lease,
// and etcd deletes the key when the lease expires. An automatic claim
// compares that no such key exists; a claim naming the address deletes it.
// Hosts whose clocks disagree therefore wait the same time.
//
// A lease per release would add a round trip to every release. Instead,
// releases share a lease for a short bucket of time: the lease outlives the
// delay by a bucket and a second, and one is used only while younger than
// a bucket, so every address waits at least the delay (a release may take
// up to a second to reach etcd) and at most the delay plus a bucket and a
// second. An election may extend it: a new leader renews every lease.

// delayBucket is how long one lease serves releases: a tenth of the delay,
// at least a second (etcd's lease TTLs are whole seconds).
func delayBucket(delay time.Duration) time.Duration {
	return max(delay/10, time.Second)
}

// delayTTL is the lease TTL for delay, in whole seconds.
func delayTTL(delay time.Duration) int64 {
	return int64((delay + delayBucket(delay) + 2*time.Second - 1) / time.Second)
}

// delayLeases caches the current lease per delay length.
type delayLeases struct {
	mu      sync.Mutex
	current map[time.Duration]*delayLease
}

type delayLease struct {
	id       clientv3.LeaseID
	asked    time.Time // when the grant was sent: the lease was granted after it
	renewing bool      // a grant of the next lease is under way
}

// lease returns a lease for a release now with this delay. Past half its
// bucket, the next lease is granted in the background, so that a steady
// stream of releases never waits for a grant; only the first release after
// a quiet bucket does.
func (s *Store) delayLease(ctx context.Context, delay time.Duration) (clientv3.LeaseID, error) {
	l := &s.delays
	l.mu.Lock()
	cur := l.current[delay]
	if cur != nil && time.Since(cur.asked) < delayBucket(delay) {
		if !cur.renewing && time.Since(cur.asked) > delayBucket(delay)/2 {
			cur.renewing = true
			go func() {
				ctx, cancel := context.WithTimeout(s.cli.Ctx(), delayBucket(delay))
				defer cancel()
				_, _ = s.grantDelayLease(ctx, delay) // on failure, the next release grants its own
			}()
		}
		l.mu.Unlock()
		return cur.id, nil
	}
	l.mu.Unlock()
	return s.grantDelayLease(ctx, delay)
}

func (s *Store) grantDelayLease(ctx context.Context, delay time.Duration) (clientv3.LeaseID, error) {
	asked := time.Now()
	g, err := bounded(s, ctx, func(actx context.Context) (*clientv3.LeaseGrantResponse, error) {
		return s.cli.Grant(actx, delayTTL(delay))
	})
	if err != nil {
		return 0, fmt.Errorf("granting a reuse-delay lease: %w", err)
	}
	l := &s.delays
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.current == nil {
		l.current = map[time.Duration]*delayLease{}
	}
	if cur := l.current[delay]; cur == nil || cur.asked.Before(asked) {
		l.current[delay] = &delayLease{id: g.ID, asked: asked}
	}
	return g.ID, nil
}

// forgetDelayLease drops a lease etcd no longer knows (restored from an
// older backup, revoked by hand), so the next release grants a new one.
func (s *Store) forgetDelayLease(id clientv3.LeaseID) {
	l := &s.delays
	l.mu.Lock()
	defer l.mu.Unlock()
	for d, cur := range l.current {
		if cur.id == id {
			delete(l.current, d)
		}
	}
}

// NextReuse asks etcd how long the pool's earliest delay key has left: the
// key created first holds the oldest release, whose lease (granted at most
// a bucket earlier than any other's) expires first, give or take a bucket.
func (s *Store) NextReuse(ctx context.Context, subnet netip.Prefix) (time.Duration, bool, error) {
	r, err := s.get(ctx, s.k.delaysDir(subnet), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		return 0, false, fmt.Errorf("reading the reuse delays of pool %s: %w", subnet, err)
	}
	if len(r.Kvs) == 0 || r.Kvs[0].Lease == 0 {
		return 0, false, nil
	}
	ttl, err := bounded(s, ctx, func(actx context.Context) (*clientv3.LeaseTimeToLiveResponse, error) {
		return s.cli.TimeToLive(actx, clientv3.LeaseID(r.Kvs[0].Lease))
	})
	if err != nil {
		return 0, false, fmt.Errorf("reading the lease of %s: %w", r.Kvs[0].Key, err)
	}
	if ttl.TTL <= 0 {
		return 0, false, nil // expired just now
	}
	return time.Duration(ttl.TTL) * time.Second, true, nil
}
