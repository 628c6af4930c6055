package etcdstore

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// TestReleaseBehindRidesWithNextClaim: a release dockerd was answered for
// waits for the next request and commits in its transaction; alone, it
// commits once its linger is over.
func TestReleaseBehindRidesWithNextClaim(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := New(cli, "/test")
	const linger = 2 * time.Second // long, so that a slow machine cannot make the test pass by chance
	s.batch.linger = linger
	p := pool.New(s, pool.Config{Host: "h"})
	n, err := pool.NewNetwork("198.18.0.0/24", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	container := func(mac string) pool.Allocation { return pool.Allocation{Kind: pool.KindContainer, MAC: mac} }
	first, err := p.Allocate(ctx, n, netip.Addr{}, container("02:42:00:00:00:01"))
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 2)
	done := func(ok bool, err error) error {
		if err == nil && !ok {
			t.Error("the release released nothing")
		}
		released <- err
		return err
	}
	start := time.Now()
	if !p.ReleaseBehind(n.Subnet, first, time.Minute, done) {
		t.Fatal("the release did not go behind")
	}
	for queued := 0; queued == 0; time.Sleep(time.Millisecond) {
		s.batch.mu.Lock()
		queued = len(s.batch.queue)
		s.batch.mu.Unlock()
	}
	second, err := p.Allocate(ctx, n, netip.Addr{}, container("02:42:00:00:00:02"))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= linger {
		t.Errorf("the claim and the release took %s: the claim waited for the linger (%s)", took, linger)
	}
	revision := func(key string) int64 {
		r, err := cli.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("reading %s: %v %v", key, r, err)
		}
		return r.Kvs[0].ModRevision
	}
	if freed, claimed := revision(s.k.free(n.Subnet, first)), revision(s.k.used(n.Subnet, second)); freed != claimed {
		t.Errorf("the release committed at revision %d, the next claim at %d: want one transaction", freed, claimed)
	}

	start = time.Now()
	if !p.ReleaseBehind(n.Subnet, second, time.Minute, done) {
		t.Fatal("the second release did not go behind")
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < linger || took > linger+time.Second {
		t.Errorf("a release with no request to ride with committed after %s; want it to wait for company for up to %s", took, linger)
	}
	if r, err := cli.Get(ctx, s.k.free(n.Subnet, second)); err != nil || len(r.Kvs) != 1 {
		t.Errorf("%s is not free after its release: %v %v", second, r, err)
	}
}
