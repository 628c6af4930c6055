package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// eventually polls cond until it holds, failing the test after 10 s.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
	}
	t.Fatalf("%s: still %s after 10s", what, last)
}

func countsAre(f *pool.FreeSet, ready, waiting uint64) func() (bool, string) {
	return func() (bool, string) {
		r, w := f.Counts()
		return r == ready && w == waiting, fmt.Sprintf("%d ready, %d waiting", r, w)
	}
}

// TestFreeSetFollowsOtherHosts: host b's copy of the free set sees what
// host a claims and releases, reuse delays included.
func TestFreeSetFollowsOtherHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	a := pool.New(etcdstore.New(srv.Client(t), "/test"), pool.Config{Host: "a", ReuseDelay: time.Hour})
	sb := etcdstore.New(srv.Client(t), "/test")
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.0/26")
	if err := a.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	view, err := sb.FreeSet(ctx, n.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "loaded", countsAre(view, 63, 0))
	var got []netip.Addr
	for i := range 10 {
		addr, err := a.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:00:00:00:%02x", i)})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addr)
	}
	eventually(t, "after 10 claims", countsAre(view, 53, 0))
	if _, err := a.Release(ctx, n.Subnet, got[0]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "after a release with an hour's reuse delay", countsAre(view, 53, 1))
	if _, err := a.Evict(ctx, n.Subnet, got[1], false, ""); err != nil {
		t.Fatal(err)
	}
	eventually(t, "after an eviction", countsAre(view, 53, 2))
}

// TestFreeSetReloadsWhenRangesGrow: addresses seeded into a new range
// after the copy was loaded appear in it, and a network on that range
// allocates from them.
func TestFreeSetReloadsWhenRangesGrow(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test")
	p := pool.New(s, pool.Config{Host: "h"})
	subnet := netip.MustParsePrefix("198.18.0.0/16")
	if _, err := p.AddRanges(ctx, subnet, rangeSet(t, "198.18.0.1-198.18.0.10"), nil); err != nil {
		t.Fatal(err)
	}
	view, err := s.FreeSet(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "loaded", countsAre(view, 10, 0))
	if _, err := p.AddRanges(ctx, subnet, rangeSet(t, "198.18.5.1-198.18.5.20"), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "after a second range", countsAre(view, 30, 0))
	n := mustNetwork(t, "198.18.0.0/16", "198.18.5.0/24")
	got, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer})
	if err != nil || !n.IPRange.Contains(got) {
		t.Fatalf("allocation from the new range: %s, %v", got, err)
	}

	// Removed and created again with other ranges: the copy follows.
	if err := s.DeletePool(ctx, subnet, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "after pool rm", countsAre(view, 0, 0))
	if _, err := p.AddRanges(ctx, subnet, rangeSet(t, "198.18.9.0-198.18.9.255"), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "after re-creating", countsAre(view, 256, 0))
}

// TestConcurrentClaimsShareTransactions: claims in flight at once are
// committed together (fewer etcd revisions than claims), each still
// decided alone, and requests of one endpoint, whose owner keys would clash
// in one transaction, all get its one address.
func TestConcurrentClaimsShareTransactions(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	cli := srv.Client(t)
	p := pool.New(etcdstore.New(cli, "/test"), pool.Config{Host: "h"})
	n := mustNetwork(t, "198.18.0.0/24", "")
	if err := p.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	// Load the copy first, so that the claims below start together.
	if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
		t.Fatal(err)
	}
	revision := func() int64 {
		r, err := cli.Get(ctx, "/test/none")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	const claims, sameMAC = 96, 8
	before := revision()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		got    = map[netip.Addr]int{}
		shared []netip.Addr
		start  = make(chan struct{})
	)
	for i := range claims + sameMAC {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mac := fmt.Sprintf("02:42:00:00:01:%02x", i)
			if i >= claims {
				mac = "02:42:00:00:02:00"
			}
			<-start
			a, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: mac})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("claim %d: %v", i, err)
				return
			}
			if i >= claims {
				shared = append(shared, a)
			} else {
				got[a]++
			}
		}()
	}
	close(start)
	wg.Wait()
	for a, k := range got {
		if k > 1 || (len(shared) > 0 && a == shared[0]) {
			t.Errorf("%s handed out more than once", a)
		}
	}
	for _, a := range shared {
		if a != shared[0] {
			t.Errorf("one endpoint got %s and %s", shared[0], a)
		}
	}
	// Each claim that committed alone would be one revision, the adopting
	// retries of the shared MAC one each.
	if revs := revision() - before; revs >= claims {
		t.Errorf("%d claims took %d revisions: not coalesced", claims, revs)
	} else {
		t.Logf("%d claims in %d revisions", claims+sameMAC, revs)
	}
}

// TestFreeSetOfUnknownPool: asking for a pool that does not exist fails,
// and is asked again once the pool exists.
func TestFreeSetOfUnknownPool(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test")
	subnet := netip.MustParsePrefix("198.18.0.0/24")
	if _, err := s.FreeSet(ctx, subnet); err == nil {
		t.Fatal("free set of a pool that does not exist")
	}
	if _, err := pool.New(s, pool.Config{Host: "h"}).AddRanges(ctx, subnet, rangeSet(t, "198.18.0.1-198.18.0.4"), nil); err != nil {
		t.Fatal(err)
	}
	view, err := s.FreeSet(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "loaded", countsAre(view, 4, 0))
}

// TestFreeSetLoadOutlivesImpatientRequests: requests that each wait less
// than a large pool takes to load still get its free set, as the load goes
// on after they give up; were it bound to the request that started it,
// every request would start over and none would ever be answered.
func TestFreeSetLoadOutlivesImpatientRequests(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, time.Minute)
	s := etcdstore.New(srv.Client(t), "/test")
	subnet := netip.MustParsePrefix("198.18.0.0/16")
	if _, err := pool.New(s, pool.Config{Host: "h"}).AddRanges(ctx, subnet, rangeSet(t, "198.18.0.1-198.18.255.254"), nil); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
		view, err := s.FreeSet(rctx, subnet)
		cancel()
		if err == nil {
			if ready, _ := view.Counts(); ready != 65534 {
				t.Fatalf("loaded %d free addresses, want 65534", ready)
			}
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) || attempt == 2000 {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
}
