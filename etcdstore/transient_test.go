package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// A store call whose caller's deadline ends while etcd is down is not
// transient: the request is over. (That a call which did not reach a
// leader is transient, TestLeaderKillFailsNoRequest shows on real errors,
// and etcdstore's TestRetryable on each kind.)
func TestCallersDeadlineIsNotTransient(t *testing.T) {
	t.Parallel()
	c := newClusterPool(t, 1, "198.18.0.0/28")
	c.members[0].kill(t)
	a := pool.Allocation{Kind: pool.KindContainer, Host: "h", MAC: "02:42:c6:12:00:01", Since: time.Now()}
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.store.Claim(ctx, c.net.Subnet, netip.MustParseAddr("198.18.0.1"), a, false)
		done := ctx.Err() != nil
		cancel()
		if err == nil {
			t.Fatal("a claim against a dead etcd succeeded")
		}
		if done && errors.Is(err, pool.ErrTransient) {
			t.Fatalf("the caller's own deadline counted as transient: %v", err)
		}
	}
}

// leader returns the member that leads, asking those that answer.
func leader(t *testing.T, cli *clientv3.Client, ms []*member) *member {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, m := range ms {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			st, err := cli.Status(ctx, m.client)
			cancel()
			if err == nil && st.Leader == st.Header.MemberId {
				return m
			}
		}
	}
	t.Fatal("no leader after 20s")
	return nil
}

// Leader elections must not fail requests that still have time: with the
// leader killed twice while 8 workers allocate and release through
// pool and this store, every request succeeds within its 10 s deadline
// (--request-timeout), no address is handed out twice, and nothing stays
// used afterwards.
func TestLeaderKillFailsNoRequest(t *testing.T) {
	t.Parallel()
	c := newClusterPool(t, 3, "198.18.0.0/24")
	ms, s, p, n := c.members, c.store, c.pools, c.net

	var (
		mu                     sync.Mutex
		holder                 = map[netip.Addr]string{} // what the workers hold now
		allocs, releases, fail atomic.Int64
		stop                   atomic.Bool
		wg                     sync.WaitGroup
	)
	failed := func(what string, err error) {
		if fail.Add(1) <= 5 {
			t.Logf("%s: %v", what, err)
		}
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				mac := fmt.Sprintf("02:42:00:00:%02x:%02x", w, i%256)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				addr, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: mac})
				cancel()
				if err != nil {
					failed("allocate", err)
					continue
				}
				allocs.Add(1)
				mu.Lock()
				if other, ok := holder[addr]; ok {
					t.Errorf("%s handed to %s while %s holds it", addr, mac, other)
				}
				holder[addr] = mac
				mu.Unlock()
				ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
				mu.Lock()
				delete(holder, addr) // before the release: once it commits, others may get it
				mu.Unlock()
				_, err = p.Release(ctx, n.Subnet, addr)
				cancel()
				if err != nil {
					failed("release of "+addr.String(), err)
					continue
				}
				releases.Add(1)
			}
		}()
	}

	// Two elections: kill the leader, bring it back, kill the new one.
	for range 2 {
		time.Sleep(time.Second)
		m := leader(t, c.client, ms)
		t.Logf("killing leader %s", m.name)
		m.kill(t)
		time.Sleep(1500 * time.Millisecond)
		m.launch(t)
		m.waitHealthy(t)
	}
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d allocations, %d releases, %d failed requests", allocs.Load(), releases.Load(), fail.Load())
	if fail.Load() > 0 {
		t.Errorf("%d requests failed during leader elections; want 0", fail.Load())
	}

	// The undo of a claim that failed runs in the background: give it time.
	ctx := ctxT(t, 35*time.Second)
	for {
		snap, err := s.Snapshot(ctx, n.Subnet)
		if err != nil {
			t.Fatal(err)
		}
		if bad := pool.Check(snap); len(bad) > 0 {
			t.Fatalf("after the run: %+v", bad)
		}
		if len(snap.Used) == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%d addresses still used after the run", len(snap.Used))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// clusterPool is an etcd cluster with host h attached to one pool on it.
type clusterPool struct {
	members []*member
	client  *clientv3.Client
	store   *etcdstore.Store
	pools   *pool.Pools
	net     pool.Network
}

// newClusterPool starts an etcd cluster of members and attaches host h to
// a pool of subnet on it.
func newClusterPool(t *testing.T, members int, subnet string) clusterPool {
	t.Helper()
	c := clusterPool{members: startCluster(t, members)}
	c.client = dial(t, etcdstore.Config{Endpoints: endpoints(c.members), DialTimeout: 2 * time.Second})
	c.store = etcdstore.New(c.client, "/test")
	c.pools = pool.New(c.store, pool.Config{Host: "h"})
	c.net = mustNetwork(t, subnet, "")
	if err := c.pools.Attach(ctxT(t, 10*time.Second), c.net); err != nil {
		t.Fatal(err)
	}
	return c
}
