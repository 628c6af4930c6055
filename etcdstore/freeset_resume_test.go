package etcdstore_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// A member that loses its leader cancels its require-leader watches, as
// every follower does while a cluster has no quorum. The free-set copy
// must resume its watch where it stopped, not read the whole pool again:
// at a thousand hosts, reloads all at once are what etcd cannot take as it
// recovers. The changes made meanwhile still reach the copy.
func TestFreeSetWatchResumesWithoutReload(t *testing.T) {
	t.Parallel()
	ms := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The copy's daemon speaks to one member; the two others go away.
	cli := dial(t, etcdstore.Config{Endpoints: []string{ms[0].client}, DialTimeout: 2 * time.Second})
	store := etcdstore.New(cli, "/resume")
	n, err := pool.NewNetwork("198.18.0.0/24", "198.18.0.0/28")
	if err != nil {
		t.Fatal(err)
	}
	here := pool.New(store, pool.Config{Host: "h1"})
	if err := here.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	if _, err := store.FreeSet(ctx, n.Subnet); err != nil {
		t.Fatal(err)
	}
	before := store.CopyCounts()[n.Subnet]

	ms[1].kill(t)
	ms[2].kill(t)
	// etcd cancels require-leader watches after a few election timeouts
	// (1 s each by default) without a leader.
	time.Sleep(6 * time.Second)
	ms[1].launch(t)
	ms[2].launch(t)
	ms[1].waitHealthy(t)
	ms[2].waitHealthy(t)

	// Another host takes an address once the cluster is back.
	other := dial(t, etcdstore.Config{Endpoints: endpoints(ms[1:]), DialTimeout: 2 * time.Second})
	taken, err := pool.New(etcdstore.New(other, "/resume"), pool.Config{Host: "h2"}).Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:00:02"})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		now := store.CopyCounts()[n.Subnet]
		if now.Free == before.Free-1 {
			if now.Loads != 1 {
				t.Fatalf("the copy was read %d times; want once, with the watch resumed after the outage", now.Loads)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy never saw %s taken: %+v, was %+v", taken, now, before)
		}
	}
}
