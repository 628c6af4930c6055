package etcdstore_test

import (
	"context"
	"crypto/rand"
	"net/netip"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// Short timings so a lost lease is noticed in about a second.
var fastKeeper = etcdstore.KeeperConfig{TTL: 3 * time.Second, SeenEvery: 300 * time.Millisecond, CallTimeout: time.Second}

func startKeeper(t *testing.T, s *etcdstore.Store, host string) *etcdstore.Keeper {
	t.Helper()
	k, err := s.StartKeeper(ctxT(t, 10*time.Second), hostRecord(host, "boot-1"), fastKeeper)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Stop(context.Background()) })
	return k
}

// hostRecord is a daemon's record on the machine of boot id boot, with an
// instance of its own.
func hostRecord(host, boot string) etcdstore.HostRecord {
	return etcdstore.HostRecord{Host: host, Since: time.Now().UTC(), Hostname: "test", PID: os.Getpid(),
		Instance: rand.Text()[:16], BootID: boot}
}

// status polls the census until cond holds for host, or fails after 10s.
func waitStatus(t *testing.T, s *etcdstore.Store, host, what string, cond func(*etcdstore.HostStatus) bool) *etcdstore.HostStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cen, err := s.Census(ctxT(t, 2*time.Second))
		if err == nil && cond(cen.Status(host)) {
			return cen.Status(host)
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: not %s after 10s (last error %v)", host, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func alive(h *etcdstore.HostStatus) bool { return h.State() == etcdstore.HostAlive }

// TestKeeperLifecycle: the lease-bound key appears, lastseen advances, and
// a clean stop removes the key at once and marks lastseen stopped.
func TestKeeperLifecycle(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	k := startKeeper(t, s, "h1")
	h := waitStatus(t, s, "h1", "alive", alive)
	if h.Live.Host != "h1" || h.Live.Hostname != "test" || h.LastSeen == nil || h.LastSeen.Stopped {
		t.Fatalf("status %+v %+v", h.Live, h.LastSeen)
	}
	first := h.LastSeen.Seen
	waitStatus(t, s, "h1", "seen again", func(h *etcdstore.HostStatus) bool { return h.LastSeen.Seen.After(first) })
	ttl, err := cli.TimeToLive(ctxT(t, 2*time.Second), k.Lease())
	if err != nil || ttl.GrantedTTL != 3 || ttl.TTL <= 0 {
		t.Fatalf("lease %x: %+v %v; want TTL 3s, alive", k.Lease(), ttl, err)
	}
	lease := k.Lease()

	if err := k.Stop(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// No waiting: the revoke took the key with it.
	cen, err := s.Census(ctxT(t, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h := cen.Status("h1"); h.State() != etcdstore.HostStopped || h.Live != nil || !h.LastSeen.Stopped {
		t.Fatalf("after Stop: state %s, %+v", h.State(), h.LastSeen)
	}
	if ttl, err := cli.TimeToLive(ctxT(t, 2*time.Second), lease); err != nil || ttl.TTL != -1 {
		t.Fatalf("lease after Stop: %+v %v; want revoked", ttl, err)
	}
	if st := cen.Status("never"); st.State() != etcdstore.HostUnknown {
		t.Fatalf("a host with no record: %s", st.State())
	}
}

// TestKeeperRecovers: the keeper puts its key back after the lease is lost
// (revoked here, as etcd does when the daemon is cut off longer than the
// TTL), after the key is deleted, and after etcd restarts.
func TestKeeperRecovers(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	k := startKeeper(t, s, "h1")
	waitStatus(t, s, "h1", "alive", alive)

	lost := k.Lease()
	if _, err := cli.Revoke(ctxT(t, 2*time.Second), lost); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitStatus(t, s, "h1", "announced with a new lease", func(h *etcdstore.HostStatus) bool { return alive(h) && k.Lease() != lost })
	t.Logf("re-announced %s after its lease was revoked", time.Since(start).Round(time.Millisecond))

	if _, err := cli.Delete(ctxT(t, 2*time.Second), "/test/hosts/h1"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, "h1", "re-created after deletion", alive)

	// An outage longer than the TTL: the daemon cannot refresh anything
	// meanwhile, and is back afterwards without help.
	srv.Stop(t)
	time.Sleep(4 * time.Second)
	srv.Restart(t)
	waitStatus(t, s, "h1", "alive after the etcd restart", alive)
	r, err := cli.Get(ctxT(t, 2*time.Second), "/test/hosts/h1")
	if err != nil || len(r.Kvs) != 1 || clientv3.LeaseID(r.Kvs[0].Lease) != k.Lease() {
		t.Fatalf("host key after restart: %v %v; want it bound to lease %x", r, err, k.Lease())
	}

	// With etcd gone, Stop still returns within its bound.
	srv.Stop(t)
	start = time.Now()
	err = k.Stop(ctxT(t, 3*time.Second))
	if took := time.Since(start); err == nil || took > 4*time.Second {
		t.Fatalf("Stop with etcd down: %v after %s; want an error within the call timeout", err, took)
	}
}

// TestReleaseListedGuards: gc's release (pool.ReleaseListed) frees a listed
// address only while its record is the listed one and, under the store's
// DeadHostGuard, while that host stays dead; the owner index goes with it,
// the pool's reuse delay applies, and the pool stays consistent.
func TestReleaseListedGuards(t *testing.T) {
	_, s, _, n := attachedPool(t, "198.18.0.0/24", "198.18.0.128/25")
	ctx := ctxT(t, time.Minute)
	dead := pool.New(s, pool.Config{Host: "dead"})
	addr := func(a string) netip.Addr { return netip.MustParseAddr(a) }
	for i, a := range []string{"198.18.0.130", "198.18.0.131"} {
		mac := []string{"02:42:c6:12:00:82", "02:42:c6:12:00:83"}[i]
		if _, err := dead.Allocate(ctx, n, addr(a), pool.Allocation{Kind: pool.KindContainer, MAC: mac}); err != nil {
			t.Fatal(err)
		}
	}
	v6 := mustNetwork(t, "fd00:12::/120", "")
	if err := dead.Attach(ctx, v6); err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Allocate(ctx, v6, addr("fd00:12::7"), pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:07"}); err != nil {
		t.Fatal(err)
	}
	k := startKeeper(t, s, "dead")
	waitStatus(t, s, "dead", "alive", alive)
	if err := k.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	census := func() (etcdstore.Census, map[netip.Addr]etcdstore.ListedAddr) {
		t.Helper()
		cen, err := s.Census(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[netip.Addr]etcdstore.ListedAddr{}
		for _, u := range cen.Used {
			m[u.Addr] = u
		}
		return cen, m
	}
	cen, listed := census()
	if u := listed[addr("fd00:12::7")]; u.Subnet != v6.Subnet || u.Allocation.Host != "dead" {
		t.Fatalf("IPv6 entry listed as %+v", u)
	}
	status := cen.Status("dead")
	gc := pool.New(s, pool.Config{Host: "operator"})
	release := func(u etcdstore.ListedAddr, dead *etcdstore.HostStatus) (bool, error) {
		var guards []pool.Guard
		if dead != nil {
			guards = append(guards, s.DeadHostGuard(dead))
		}
		return gc.ReleaseListed(ctx, u.Subnet, u.Addr, u.Rev, guards...)
	}

	// .130 is released by its host and handed to another endpoint: the
	// stale listing must not free the new holder.
	if _, err := dead.Release(ctx, n.Subnet, addr("198.18.0.130")); err != nil {
		t.Fatal(err)
	}
	other := pool.New(s, pool.Config{Host: "other"})
	if _, err := other.Allocate(ctx, n, addr("198.18.0.130"), pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:01:82"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := release(listed[addr("198.18.0.130")], nil); ok || err != nil {
		t.Fatalf("stale listing of a re-allocated address: released=%v err=%v", ok, err)
	}

	// The dead host comes back: its addresses stay, also after it stops
	// again (its lastseen moved).
	k = startKeeper(t, s, "dead")
	waitStatus(t, s, "dead", "alive", alive)
	if ok, err := release(listed[addr("198.18.0.131")], status); ok || err != nil {
		t.Fatalf("release while the host is alive: released=%v err=%v", ok, err)
	}
	if err := k.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := release(listed[addr("198.18.0.131")], status); ok || err != nil {
		t.Fatalf("release with a stale lastseen: released=%v err=%v", ok, err)
	}

	// A fresh listing releases it, .131 into its pool's reuse delay; a
	// second attempt finds nothing.
	hour := time.Hour
	if err := gc.Set(ctx, n.Subnet, pool.Settings{ReuseDelay: &hour}); err != nil {
		t.Fatal(err)
	}
	cen, listed = census()
	for _, a := range []string{"198.18.0.131", "fd00:12::7"} {
		if ok, err := release(listed[addr(a)], cen.Status("dead")); !ok || err != nil {
			t.Fatalf("release of %s: released=%v err=%v", a, ok, err)
		}
		if ok, err := release(listed[addr(a)], cen.Status("dead")); ok || err != nil {
			t.Fatalf("second release of %s: released=%v err=%v", a, ok, err)
		}
	}
	if c, err := s.Claim(ctx, n.Subnet, addr("198.18.0.131"), pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:01:83", Since: time.Now()}, false); err != nil || c.Taken || !c.Delayed {
		t.Fatalf("automatic claim of .131 within the reuse delay gc gave it: %+v, %v; want it refused as delayed", c, err)
	}
	_, listed = census()
	if len(listed) != 1 || listed[addr("198.18.0.130")].Allocation.Host != "other" {
		t.Fatalf("used after the releases: %v; want only other's .130", listed)
	}
	for _, subnet := range []netip.Prefix{n.Subnet, v6.Subnet} {
		snap, err := s.Snapshot(ctx, subnet)
		if err != nil {
			t.Fatal(err)
		}
		if bad := pool.Check(snap); len(bad) > 0 {
			t.Fatalf("pool %s after the releases: %+v", subnet, bad)
		}
	}
	if f, _, err := s.Counts(ctx, n.Subnet); err != nil || f != 126 {
		t.Fatalf("free in %s: %d %v; want 127 seeded minus other's .130", n.Subnet, f, err)
	}
}
