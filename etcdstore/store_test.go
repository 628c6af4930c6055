package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustNetwork(t *testing.T, subnet, ipRange string) pool.Network {
	t.Helper()
	n, err := pool.NewNetwork(subnet, ipRange)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// attachedPool starts etcd and attaches host "h" to a new pool for
// subnet (ip-range optional), seeding it.
func attachedPool(t *testing.T, subnet, ipRange string) (*etcdtest.Server, *etcdstore.Store, *pool.Pools, pool.Network) {
	t.Helper()
	srv := etcdtest.Start(t)
	s := etcdstore.New(srv.Client(t), "/test")
	p := pool.New(s, pool.Config{Host: "h"})
	n := mustNetwork(t, subnet, ipRange)
	if err := p.Attach(ctxT(t, 10*time.Second), n); err != nil {
		t.Fatal(err)
	}
	return srv, s, p, n
}

func rangeSet(t *testing.T, ranges ...string) *netipx.IPSet {
	t.Helper()
	var b netipx.IPSetBuilder
	for _, r := range ranges {
		b.AddRange(netipx.MustParseIPRange(r))
	}
	s, err := b.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestConcurrentHostsNeverShareAnAddress: two hosts, each with its own
// client, 32 goroutines each, allocate thousands of addresses at once.
// Every address is handed out once; releasing them all gives back exactly
// the seeded set.
func TestConcurrentHostsNeverShareAnAddress(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 5*time.Minute)
	n := mustNetwork(t, "198.18.0.0/20", "")
	seeded := rangeSet(t, "198.18.0.1-198.18.15.254")

	type host struct {
		id    string
		pools *pool.Pools
		store *etcdstore.Store
	}
	var hosts []host
	for _, id := range []string{"host-a", "host-b"} {
		s := etcdstore.New(srv.Client(t), "/test")
		hosts = append(hosts, host{id, pool.New(s, pool.Config{Host: id}), s})
	}
	if added, err := hosts[0].pools.AddRanges(ctx, n.Subnet, seeded, nil); err != nil || added != 4094 {
		t.Fatalf("seeding: added %d, %v", added, err)
	}
	for _, h := range hosts {
		if err := h.pools.Attach(ctx, n); err != nil {
			t.Fatal(err)
		}
	}

	const perGoroutine = 50
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for _, h := range hosts {
		for g := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perGoroutine {
					mac := fmt.Sprintf("02:42:c6:12:%02x:%02x", g, i) // one endpoint each
					a, err := h.pools.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: mac})
					if err != nil {
						t.Errorf("%s: %v", h.id, err)
						return
					}
					mu.Lock()
					if prev, dup := owner[a]; dup {
						t.Errorf("%s handed to %s and %s", a, prev, h.id)
					}
					owner[a] = h.id
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if len(owner) != 2*32*perGoroutine {
		t.Fatalf("%d addresses allocated, want %d", len(owner), 2*32*perGoroutine)
	}
	used, err := hosts[0].store.Used(ctx, n.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	if len(used) != len(owner) {
		t.Fatalf("etcd has %d used entries for %d allocations", len(used), len(owner))
	}
	for _, u := range used {
		if owner[u.Addr] != u.Allocation.Host || u.Allocation.Kind != pool.KindContainer {
			t.Fatalf("used %s recorded as %+v, allocated to %s", u.Addr, u.Allocation, owner[u.Addr])
		}
	}

	// Release concurrently too, each host its own.
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a, id := range owner {
				if id != h.id {
					continue
				}
				if ok, err := h.pools.Release(ctx, n.Subnet, a); err != nil || !ok {
					t.Errorf("release %s by %s: %v %v", a, id, ok, err)
				}
			}
		}()
	}
	wg.Wait()
	free, err := hosts[0].store.Free(ctx, n.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	var b netipx.IPSetBuilder
	for _, a := range free {
		b.Add(a)
	}
	got, _ := b.IPSet()
	if len(free) != 4094 || !got.Equal(seeded) {
		t.Fatalf("free set after releasing everything: %d addresses %s; want the seeded %s", len(free), pool.FormatRanges(got), pool.FormatRanges(seeded))
	}
	if f, u, err := hosts[0].store.Counts(ctx, n.Subnet); err != nil || f != 4094 || u != 0 {
		t.Fatalf("counts: free %d used %d, %v", f, u, err)
	}
}

func TestSeedIsIdempotentAndNeverTouchesUsed(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test/")
	p := pool.New(s, pool.Config{Host: "h"})
	n := mustNetwork(t, "198.18.0.0/24", "")
	if added, err := p.AddRanges(ctx, n.Subnet, rangeSet(t, "198.18.0.1-198.18.0.100"), nil); err != nil || added != 100 {
		t.Fatalf("first seeding: %d, %v", added, err)
	}
	taken := netip.MustParseAddr("198.18.0.50")
	if _, err := p.Allocate(ctx, n, taken, pool.Allocation{Kind: pool.KindContainer}); err != nil {
		t.Fatal(err)
	}
	var calls int
	added, err := p.AddRanges(ctx, n.Subnet, rangeSet(t, "198.18.0.1-198.18.0.200"), func(done, total uint64) {
		calls++
		if done > total || total != 200 {
			t.Errorf("progress %d/%d", done, total)
		}
	})
	if err != nil || added != 100 || calls == 0 {
		t.Fatalf("second seeding: added %d (want only the 100 new), %v, %d progress calls", added, err, calls)
	}
	e, err := s.Entry(ctx, n.Subnet, taken)
	if err != nil || e.Free || e.Used == nil {
		t.Fatalf("used address after re-seeding: %+v, %v", e, err)
	}
	if f, u, _ := s.Counts(ctx, n.Subnet); f != 199 || u != 1 {
		t.Fatalf("counts %d free %d used, want 199 and 1", f, u)
	}
	m, ok, err := s.Meta(ctx, n.Subnet)
	if err != nil || !ok || m.Seeding || pool.FormatRanges(m.Ranges) != "198.18.0.1-198.18.0.200" {
		t.Fatalf("meta %+v %v %v", m, ok, err)
	}
}

func TestClaimReportsHolderAndExhaustion(t *testing.T) {
	_, s, p, n := attachedPool(t, "198.18.0.0/24", "198.18.0.16/28")
	ctx := ctxT(t, time.Minute)
	first := netip.MustParseAddr("198.18.0.16")
	if _, err := p.Allocate(ctx, n, first, pool.Allocation{Kind: pool.KindContainer}); err != nil {
		t.Fatal(err)
	}
	c, err := s.Claim(ctx, n.Subnet, first, pool.Allocation{Kind: pool.KindContainer}, false)
	if err != nil || c.Taken || c.Holder == nil || c.Holder.Host != "h" {
		t.Fatalf("claim of a used address: %+v, %v", c, err)
	}
	for range 15 {
		if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); !errors.Is(err, pool.ErrNoFree) {
		t.Fatalf("exhausted: %v", err)
	}
	// Free addresses outside the network's range are not candidates.
	if f, _, _ := s.Counts(ctx, n.Subnet); f != 0 {
		t.Fatalf("free after exhausting the only seeded range: %d", f)
	}
	other := mustNetwork(t, "198.18.9.0/24", "")
	if _, err := p.Allocate(ctx, other, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("allocation from a pool that does not exist: %v", err)
	}
}

func TestSwapRefusesStaleEntry(t *testing.T) {
	_, s, p, n := attachedPool(t, "198.18.0.0/28", "")
	ctx := ctxT(t, time.Minute)
	a := netip.MustParseAddr("198.18.0.3")
	stale, err := s.Entry(ctx, n.Subnet, a)
	if err != nil || !stale.Free {
		t.Fatalf("entry %+v %v", stale, err)
	}
	if _, err := p.Allocate(ctx, n, a, pool.Allocation{Kind: pool.KindContainer}); err != nil {
		t.Fatal(err)
	}
	fresh, ok, err := s.Swap(ctx, n.Subnet, stale, pool.State{Used: &pool.Allocation{Kind: pool.KindAux, Host: "x"}})
	if err != nil || ok {
		t.Fatalf("swap on a stale entry succeeded: %v %v", ok, err)
	}
	if fresh.Free || fresh.Used == nil || fresh.Used.Kind != pool.KindContainer {
		t.Fatalf("fresh entry %+v", fresh)
	}
}

// TestOverlappingPoolsRace: hosts creating overlapping subnets at the same
// moment; the pools that come out of it never overlap, and every other
// request is refused with ErrOverlap.
func TestOverlappingPoolsRace(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	subnets := []string{"198.18.0.0/16", "198.18.0.0/24", "198.18.1.0/24", "198.18.0.128/25", "198.18.0.0/23", "198.18.0.0/16"}
	var wg sync.WaitGroup
	errs := make([]error, len(subnets))
	for i, sn := range subnets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pool.New(etcdstore.New(srv.Client(t), "/test"), pool.Config{Host: sn})
			errs[i] = p.Attach(ctx, mustNetwork(t, sn, ""))
		}()
	}
	wg.Wait()
	pools, err := etcdstore.New(srv.Client(t), "/test").Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	created := map[string]bool{}
	for i, a := range pools {
		created[a.Subnet.String()] = true
		for _, b := range pools[i+1:] {
			if a.Subnet.Overlaps(b.Subnet) {
				t.Fatalf("overlapping pools %s and %s both created", a.Subnet, b.Subnet)
			}
		}
	}
	if len(pools) == 0 {
		t.Fatal("no pool created")
	}
	for i, err := range errs {
		if created[subnets[i]] != (err == nil) || (err != nil && !errors.Is(err, pool.ErrOverlap)) {
			t.Errorf("%s: created=%v, Attach error %v", subnets[i], created[subnets[i]], err)
		}
	}
}

func TestDeletePool(t *testing.T) {
	srv, s, p, n := attachedPool(t, "198.18.0.0/28", "")
	ctx := ctxT(t, time.Minute)
	a, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePool(ctx, n.Subnet, false); err == nil || !strings.Contains(err.Error(), "still has 1 used") {
		t.Fatalf("delete while used: %v", err)
	}
	if _, err := p.Release(ctx, n.Subnet, a); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePool(ctx, n.Subnet, false); err == nil || !strings.Contains(err.Error(), "used by Docker networks of hosts h") {
		t.Fatalf("delete while a host's network uses the pool: %v", err)
	}
	if err := p.Detach(ctx, n.Subnet); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePool(ctx, n.Subnet, false); err != nil {
		t.Fatal(err)
	}
	kvs, err := srv.Client(t).Get(ctx, "/test/", clientv3.WithPrefix())
	if err != nil || kvs.Count != 0 {
		t.Fatalf("keys left after pool rm: %d, %v", kvs.Count, err)
	}
	if err := s.DeletePool(ctx, n.Subnet, true); !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("delete of a missing pool: %v", err)
	}
}

// TestEtcdOutageIsBoundedAndRecovers: with etcd stopped, a call fails
// when its context ends instead of hanging; once etcd is back, the same
// client works again.
func TestEtcdOutageIsBoundedAndRecovers(t *testing.T) {
	srv, _, p, n := attachedPool(t, "198.18.0.0/28", "")
	srv.Stop(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer})
	cancel()
	if err == nil {
		t.Fatal("allocation succeeded with etcd down")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("allocation with etcd down took %s, want about the 1s deadline", took)
	}
	srv.Restart(t)
	if _, err := p.Allocate(ctxT(t, 20*time.Second), n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
		t.Fatalf("after etcd came back: %v", err)
	}
}

// TestPoolRemovedWhileSeeding: `ipamctl pool rm` of a pool that is still
// being seeded must not leave orphaned free keys that claims would hand
// out from a pool that no longer exists.
func TestPoolRemovedWhileSeeding(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test")
	p := pool.New(s, pool.Config{Host: "h"})
	subnet := netip.MustParsePrefix("198.18.0.0/16")
	var once sync.Once
	_, err := p.AddRanges(ctx, subnet, rangeSet(t, "198.18.0.1-198.18.255.254"), func(done, total uint64) {
		if done >= 5000 {
			once.Do(func() {
				if err := s.DeletePool(ctx, subnet, false); err != nil {
					t.Errorf("pool rm during seeding: %v", err)
				}
			})
		}
	})
	if !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("seeding a pool removed midway: %v, want ErrUnknownPool", err)
	}
	r, err := srv.Client(t).Get(ctx, "/test/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 0 {
		t.Fatalf("%d keys left behind (%v)", r.Count, err)
	}
	n := mustNetwork(t, "198.18.0.0/16", "")
	if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("allocation from the removed pool: %v", err)
	}
}

// TestReuseDelayAgainstEtcd: addresses in their reuse delay are refused
// by an automatic claim and skipped by the free set, an explicit request
// takes one, and an all-delayed range is reported as such.
func TestReuseDelayAgainstEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test")
	p := pool.New(s, pool.Config{Host: "h", ReuseDelay: time.Hour})
	n := mustNetwork(t, "198.18.0.0/24", "")
	if _, err := p.AddRanges(ctx, n.Subnet, rangeSet(t, "198.18.0.1-198.18.0.60"), nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	// .1-.40 used and released: in their reuse delay for an hour.
	for i := 1; i <= 40; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
		if _, err := p.Allocate(ctx, n, a, pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:00:00:01:%02x", i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Release(ctx, n.Subnet, a); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Claim(ctx, n.Subnet, netip.MustParseAddr("198.18.0.1"), pool.Allocation{Kind: pool.KindContainer, Since: time.Now()}, false)
	if err != nil || c.Taken || !c.Delayed {
		t.Fatalf("claim at a delayed address: %+v, %v; want it refused as delayed", c, err)
	}
	// An explicit request (--ip) takes a delayed address at once.
	explicit := netip.MustParseAddr("198.18.0.2")
	if got, err := p.Allocate(ctx, n, explicit, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:04:01"}); err != nil || got != explicit {
		t.Fatalf("--ip of a delayed address: %s, %v; want it taken", got, err)
	}
	for i := range 20 {
		got, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:00:00:02:%02x", i)})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if got.As4()[3] <= 40 {
			t.Fatalf("allocation %d got %s, still in its reuse delay", i, got)
		}
	}
	if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:03:01"}); !errors.Is(err, pool.ErrNoFree) || !strings.Contains(err.Error(), "reuse delay (ipamctl pool show); the first is due in 1h") {
		t.Fatalf("only delayed addresses left: %v; want the refusal to say the first is due in about an hour", err)
	}
}

// TestReuseDelayTimedByEtcd: etcd's leader times the reuse delay. A claim
// stamped by a clock two minutes ahead or behind is refused for the delay
// all the same, and the address comes back, to a claim and to the free set
// of another host, between the delay and the delay plus the lease's slack.
func TestReuseDelayTimedByEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	const delay = time.Second
	releaser := pool.New(etcdstore.New(srv.Client(t), "/test"), pool.Config{Host: "a", ReuseDelay: delay})
	s := etcdstore.New(srv.Client(t), "/test")
	claimer := pool.New(s, pool.Config{Host: "b", ReuseDelay: delay})
	n := mustNetwork(t, "198.18.0.0/30", "") // .1 and .2
	x := netip.MustParseAddr("198.18.0.1")
	for _, p := range []*pool.Pools{releaser, claimer} {
		if err := p.Attach(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := claimer.Allocate(ctx, n, netip.MustParseAddr("198.18.0.2"), pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	release := func() time.Time {
		t.Helper()
		if _, err := releaser.Allocate(ctx, n, x, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:00:01"}); err != nil {
			t.Fatal(err)
		}
		if _, err := releaser.Release(ctx, n.Subnet, x); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	// The most the delay may last: the lease outlives it by a bucket (a
	// second here) and a second, and etcd checks for expired leases twice
	// a second; the watch then tells the free set.
	const most = delay + 2*time.Second + time.Second
	check := func(what string, released time.Time) {
		t.Helper()
		took := time.Since(released)
		if took < delay || took > most {
			t.Errorf("%s: back after %s, want between %s and %s", what, took.Round(10*time.Millisecond), delay, most)
		}
		t.Logf("%s: back after %s", what, took.Round(10*time.Millisecond))
	}

	// Claims stamped two minutes ahead and behind, in turn: neither gets
	// the address before the delay is over.
	released := release()
	for i := 0; ; i++ {
		skew := 2 * time.Minute * time.Duration(1-2*(i%2))
		a := pool.Allocation{Kind: pool.KindContainer, Host: "b", MAC: fmt.Sprintf("02:42:00:00:01:%02x", i%2), Since: time.Now().Add(skew)}
		c, err := s.Claim(ctx, n.Subnet, x, a, false)
		if err != nil {
			t.Fatal(err)
		}
		if c.Taken {
			check(fmt.Sprintf("a claim stamped %s off", skew), released)
			break
		}
		if !c.Delayed || time.Since(released) > most+time.Second {
			t.Fatalf("claim %s off, %s after the release: %+v; want it refused as delayed until the delay is over", skew, time.Since(released), c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := claimer.Release(ctx, n.Subnet, x); err != nil {
		t.Fatal(err)
	}
	released = release()

	// The other host's free set: an automatic allocation is refused,
	// naming the time left, until etcd ends the delay.
	for {
		got, err := claimer.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:02:01"})
		if err == nil {
			if got != x {
				t.Fatalf("allocated %s, want %s", got, x)
			}
			check("the free set's copy", released)
			return
		}
		// "has just ended": etcd has deleted the delay key and the watch
		// has yet to tell the free set.
		if !errors.Is(err, pool.ErrNoFree) || !strings.Contains(err.Error(), "the first is due in") && !strings.Contains(err.Error(), "has just ended") || time.Since(released) > most+time.Second {
			t.Fatalf("%s after the release: %v", time.Since(released), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
