// Package storetest is the contract of pool.Store, written once and run on
// every implementation (pool's in-memory store, etcdstore on a real etcd):
// a behaviour that differs between them is a bug in one of them.
package storetest

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"go4.org/netipx"

	"github.com/talkingdata/ipam/pool"
)

// Open returns an empty store of its own for one test.
type Open func(t *testing.T) pool.Store

// Run runs the contract on the stores open returns.
func Run(t *testing.T, open Open) {
	for _, c := range []struct {
		name string
		run  func(t *testing.T, s pool.Store)
	}{
		{"Meta", testMeta},
		{"Seed", testSeed},
		{"Claim", testClaim},
		{"OwnerIndex", testOwnerIndex},
		{"Swap", testSwap},
		{"ReuseDelay", testReuseDelay},
		{"FreeSet", testFreeSet},
		{"AddRef", testAddRef},
		{"Sticky", testSticky},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, open(t))
		})
	}
}

var (
	subnet = netip.MustParsePrefix("198.18.0.0/24")
	a1     = netip.MustParseAddr("198.18.0.1")
	a2     = netip.MustParseAddr("198.18.0.2")
	a3     = netip.MustParseAddr("198.18.0.3")
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func set(t *testing.T, ranges string) *netipx.IPSet {
	t.Helper()
	s, err := pool.ParseRanges(ranges)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// seeded creates the pool with .1-.3 seeded and free.
func seeded(t *testing.T, s pool.Store) pool.Meta {
	t.Helper()
	m, created, err := s.CreateMeta(ctx(t), pool.Meta{Subnet: subnet, Ranges: set(t, "198.18.0.1-198.18.0.3"), CreatedBy: "h1", Created: time.Now().UTC()})
	if err != nil || !created {
		t.Fatalf("CreateMeta: created=%v, %v", created, err)
	}
	if n, err := s.Seed(ctx(t), subnet, m.Ranges, nil); err != nil || n != 3 {
		t.Fatalf("Seed: %d, %v; want 3 added", n, err)
	}
	return m
}

func container(host, mac string) pool.Allocation {
	return pool.Allocation{Kind: pool.KindContainer, Host: host, MAC: mac, Since: time.Now().UTC().Truncate(time.Millisecond)}
}

func entry(t *testing.T, s pool.Store, a netip.Addr) pool.Entry {
	t.Helper()
	e, err := s.Entry(ctx(t), subnet, a)
	if err != nil {
		t.Fatalf("Entry(%s): %v", a, err)
	}
	return e
}

// CreateMeta creates once, answers the existing pool after, refuses an
// overlapping subnet; UpdateMeta compares the revision.
func testMeta(t *testing.T, s pool.Store) {
	c := ctx(t)
	if _, ok, err := s.Meta(c, subnet); ok || err != nil {
		t.Fatalf("Meta of a missing pool: ok=%v, %v", ok, err)
	}
	m := seeded(t, s)
	if cur, created, err := s.CreateMeta(c, pool.Meta{Subnet: subnet, Ranges: set(t, "198.18.0.9-198.18.0.9")}); err != nil || created || cur.Rev != m.Rev || !cur.Ranges.Equal(m.Ranges) {
		t.Fatalf("CreateMeta of an existing pool: %+v created=%v, %v; want the existing pool", cur, created, err)
	}
	if _, _, err := s.CreateMeta(c, pool.Meta{Subnet: netip.MustParsePrefix("198.18.0.128/25"), Ranges: set(t, "198.18.0.130-198.18.0.131")}); !errors.Is(err, pool.ErrOverlap) {
		t.Fatalf("CreateMeta of an overlapping subnet: %v, want ErrOverlap", err)
	}
	next := m
	next.Ranges = set(t, "198.18.0.1-198.18.0.5")
	got, ok, err := s.UpdateMeta(c, m, next)
	if err != nil || !ok || got.Rev <= m.Rev {
		t.Fatalf("UpdateMeta: %+v ok=%v, %v", got, ok, err)
	}
	if cur, ok, err := s.UpdateMeta(c, m, next); err != nil || ok || cur.Rev != got.Rev {
		t.Fatalf("UpdateMeta with a stale revision: %+v ok=%v, %v; want the current meta and ok=false", cur, ok, err)
	}
	if read, ok, err := s.Meta(c, subnet); err != nil || !ok || read.Rev != got.Rev || !read.Ranges.Equal(next.Ranges) {
		t.Fatalf("Meta after UpdateMeta: %+v ok=%v, %v", read, ok, err)
	}
}

// Seed adds only what is neither free nor used.
func testSeed(t *testing.T, s pool.Store) {
	c := ctx(t)
	m := seeded(t, s)
	if c, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:01"), false); err != nil || !c.Taken {
		t.Fatalf("Claim: %+v, %v", c, err)
	}
	if n, err := s.Seed(c, subnet, m.Ranges, nil); err != nil || n != 0 {
		t.Fatalf("Seed again: %d added, %v; want 0", n, err)
	}
	if e := entry(t, s, a1); e.Free || e.Used == nil {
		t.Fatalf("a used address after a second Seed: %+v", e)
	}
	if n, err := s.Seed(c, subnet, set(t, "198.18.0.1-198.18.0.4"), nil); err != nil || n != 1 {
		t.Fatalf("Seed of one more: %d added, %v; want 1", n, err)
	}
}

// Claim takes a free address once, and says who holds a used one.
func testClaim(t *testing.T, s pool.Store) {
	c := ctx(t)
	if got, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:01"), false); err != nil || got.Taken || !got.NoPool {
		t.Fatalf("Claim in a missing pool: %+v, %v; want NoPool", got, err)
	}
	m := seeded(t, s)
	first := container("h1", "02:42:00:00:00:01")
	got, err := s.Claim(c, subnet, a1, first, false)
	if err != nil || !got.Taken || got.Version.Meta != m.Rev {
		t.Fatalf("Claim: %+v, %v; want taken at meta revision %d", got, err, m.Rev)
	}
	e := entry(t, s, a1)
	if e.Free || e.Used == nil || e.Used.MAC != first.MAC || !e.Used.Since.Equal(first.Since) || e.Version != got.Version {
		t.Fatalf("entry after the claim: %+v; want the record, at the claim's version %+v", e, got.Version)
	}
	again, err := s.Claim(c, subnet, a1, container("h2", "02:42:00:00:00:02"), true)
	if err != nil || again.Taken || again.Holder == nil || again.Holder.Host != "h1" || again.NoPool {
		t.Fatalf("second claim: %+v, %v; want refused, naming h1's record", again, err)
	}
	none, err := s.Claim(c, subnet, netip.MustParseAddr("198.18.0.99"), container("h2", "02:42:00:00:00:03"), true)
	if err != nil || none.Taken || none.Holder != nil || none.NoPool || none.Delayed {
		t.Fatalf("claim of an unseeded address: %+v, %v; want refused with nothing to say", none, err)
	}
}

// The owner index: an endpoint (host, and MAC or name) holds one address per pool, and
// its claim of another is answered with the one it holds.
func testOwnerIndex(t *testing.T, s pool.Store) {
	c := ctx(t)
	seeded(t, s)
	a := container("h1", "02:42:00:00:00:01")
	if got, err := s.Claim(c, subnet, a1, a, false); err != nil || !got.Taken {
		t.Fatalf("Claim: %+v, %v", got, err)
	}
	got, err := s.Claim(c, subnet, a2, a, false)
	if err != nil || got.Taken || got.Existing != a1 {
		t.Fatalf("the endpoint's second claim: %+v, %v; want refused with Existing %s", got, err, a1)
	}
	if owned, ok, err := s.Owned(c, subnet, "h1/"+a.MAC); err != nil || !ok || owned != a1 {
		t.Fatalf("Owned: %s %v, %v; want %s", owned, ok, err, a1)
	}
	if _, ok, err := s.Owned(c, subnet, "h2/"+a.MAC); err != nil || ok {
		t.Fatalf("Owned for another host with the same MAC: ok=%v, %v", ok, err)
	}
	// The same MAC on another host is another endpoint.
	if got, err := s.Claim(c, subnet, a2, container("h2", a.MAC), false); err != nil || !got.Taken {
		t.Fatalf("claim by the same MAC on another host: %+v, %v", got, err)
	}
	// Without a MAC the endpoint's name indexes it (a driver that asks
	// dockerd for no MAC, on Docker >= 29).
	named := pool.Allocation{Kind: pool.KindContainer, Host: "h1", Endpoint: "db"}
	if got, err := s.Claim(c, subnet, a3, named, false); err != nil || !got.Taken {
		t.Fatalf("claim by name: %+v, %v", got, err)
	}
	if owned, ok, err := s.Owned(c, subnet, named.Owner()); err != nil || !ok || owned != a3 {
		t.Fatalf("Owned by name: %s %v, %v; want %s", owned, ok, err, a3)
	}
	// A release drops the index with the record.
	e := entry(t, s, a1)
	if _, ok, err := s.Swap(c, subnet, e, pool.State{Free: true}); err != nil || !ok {
		t.Fatalf("release: ok=%v, %v", ok, err)
	}
	if _, ok, err := s.Owned(c, subnet, "h1/"+a.MAC); err != nil || ok {
		t.Fatalf("Owned after the release: ok=%v, %v", ok, err)
	}
	if got, err := s.Claim(c, subnet, a1, named, false); err != nil || got.Taken || got.Existing != a3 {
		t.Fatalf("the named endpoint's second claim: %+v, %v; want refused with Existing %s", got, err, a3)
	}
	// With neither there is no index: nothing to find.
	if got, err := s.Claim(c, subnet, a1, pool.Allocation{Kind: pool.KindContainer, Host: "h1"}, false); err != nil || !got.Taken {
		t.Fatalf("claim with neither MAC nor name: %+v, %v", got, err)
	}
}

// Swap applies a change only to the entry it was computed from, and keeps
// an endpoint to one address.
func testSwap(t *testing.T, s pool.Store) {
	c := ctx(t)
	seeded(t, s)
	stale := entry(t, s, a1)
	gw := &pool.Allocation{Kind: pool.KindGateway, Host: "h1", Holders: map[string]int{"h1": 1}, Since: time.Now().UTC()}
	if _, ok, err := s.Swap(c, subnet, stale, pool.State{Used: gw}); err != nil || !ok {
		t.Fatalf("Swap free → gateway: ok=%v, %v", ok, err)
	}
	fresh, ok, err := s.Swap(c, subnet, stale, pool.State{Free: true})
	if err != nil || ok || fresh.Used == nil || fresh.Used.Kind != pool.KindGateway || fresh.Free {
		t.Fatalf("Swap of a stale entry: %+v ok=%v, %v; want refused with the fresh entry", fresh, ok, err)
	}
	if e := entry(t, s, a1); e.Version != fresh.Version {
		t.Fatalf("the fresh entry %+v is not what Entry reads: %+v", fresh.Version, e.Version)
	}
	// A reservation taken by an endpoint that holds another address.
	a := container("h1", "02:42:00:00:00:01")
	if got, err := s.Claim(c, subnet, a2, a, false); err != nil || !got.Taken {
		t.Fatalf("Claim: %+v, %v", got, err)
	}
	res := entry(t, s, a3)
	reserved := &pool.Allocation{Kind: pool.KindReserved, Reservation: "web", Since: time.Now().UTC()}
	if _, ok, err := s.Swap(c, subnet, res, pool.State{Used: reserved}); err != nil || !ok {
		t.Fatalf("reserving: ok=%v, %v", ok, err)
	}
	held := a
	held.Reservation = "web"
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a3), pool.State{Used: &held}); !errors.Is(err, pool.ErrUnavailable) || ok {
		t.Fatalf("an endpoint taking a second address: ok=%v, %v; want ErrUnavailable", ok, err)
	}
	// Outside the seeded ranges a release drops the record: nothing frees it.
	out := netip.MustParseAddr("198.18.0.200")
	if _, ok, err := s.Swap(c, subnet, entry(t, s, out), pool.State{Used: gw}); err != nil || !ok {
		t.Fatalf("gateway outside the ranges: ok=%v, %v", ok, err)
	}
	if _, ok, err := s.Swap(c, subnet, entry(t, s, out), pool.State{}); err != nil || !ok {
		t.Fatalf("dropping it: ok=%v, %v", ok, err)
	}
	if e := entry(t, s, out); e.Free || e.Used != nil {
		t.Fatalf("after the drop: %+v", e)
	}
}

// A freed address with a delay is refused to automatic claims, not to
// named ones, until the delay is over; the store times it.
func testReuseDelay(t *testing.T, s pool.Store) {
	c := ctx(t)
	seeded(t, s)
	a := container("h1", "02:42:00:00:00:01")
	if got, err := s.Claim(c, subnet, a1, a, false); err != nil || !got.Taken {
		t.Fatalf("Claim: %+v, %v", got, err)
	}
	const delay = time.Second
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a1), pool.State{Free: true, Delay: delay}); err != nil || !ok {
		t.Fatalf("release with a delay: ok=%v, %v", ok, err)
	}
	released := time.Now()
	if d, ok, err := s.NextReuse(c, subnet); err != nil || !ok || d <= 0 || d > delay+3*time.Second {
		t.Fatalf("NextReuse: %s ok=%v, %v; want up to the delay and the store's slack", d, ok, err)
	}
	// Stamped two minutes ahead: the claimer's clock plays no part.
	ahead := container("h2", "02:42:00:00:00:02")
	ahead.Since = ahead.Since.Add(2 * time.Minute)
	if got, err := s.Claim(c, subnet, a1, ahead, false); err != nil || got.Taken || !got.Delayed {
		t.Fatalf("automatic claim in the delay: %+v, %v; want Delayed", got, err)
	}
	for {
		got, err := s.Claim(c, subnet, a1, ahead, false)
		if err != nil {
			t.Fatal(err)
		}
		if got.Taken {
			break
		}
		if took := time.Since(released); !got.Delayed || took > delay+5*time.Second {
			t.Fatalf("%s after the release: %+v", took, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(released); took < delay {
		t.Fatalf("claimed %s after the release, within the %s delay", took, delay)
	}
	if _, ok, err := s.NextReuse(c, subnet); err != nil || ok {
		t.Fatalf("NextReuse with no delay left: ok=%v, %v", ok, err)
	}
	// A named claim takes a delayed address, and ends its delay.
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a1), pool.State{Free: true, Delay: time.Hour}); err != nil || !ok {
		t.Fatalf("release with an hour's delay: ok=%v, %v", ok, err)
	}
	if got, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:03"), true); err != nil || !got.Taken {
		t.Fatalf("named claim in the delay: %+v, %v; want taken", got, err)
	}
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a1), pool.State{Free: true}); err != nil || !ok {
		t.Fatalf("release without a delay: ok=%v, %v", ok, err)
	}
	if got, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:04"), false); err != nil || !got.Taken {
		t.Fatalf("automatic claim after a named one ended the delay: %+v, %v", got, err)
	}
}

// The free-set copy follows the store: claims, releases, delays.
func testFreeSet(t *testing.T, s pool.Store) {
	c := ctx(t)
	if _, err := s.FreeSet(c, subnet); err == nil {
		t.Fatal("FreeSet of a missing pool succeeded")
	}
	seeded(t, s)
	f, err := s.FreeSet(c, subnet)
	if err != nil {
		t.Fatal(err)
	}
	counts := func(what string, ready, waiting uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			r, w := f.Counts()
			if r == ready && w == waiting {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d ready and %d waiting, want %d and %d", what, r, w, ready, waiting)
			}
		}
	}
	counts("seeded", 3, 0)
	if got, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:01"), false); err != nil || !got.Taken {
		t.Fatalf("Claim: %+v, %v", got, err)
	}
	counts("after a claim", 2, 0)
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a1), pool.State{Free: true, Delay: time.Hour}); err != nil || !ok {
		t.Fatalf("release: ok=%v, %v", ok, err)
	}
	counts("after a delayed release", 2, 1)
	if got, err := s.Claim(c, subnet, a1, container("h1", "02:42:00:00:00:02"), true); err != nil || !got.Taken {
		t.Fatalf("named claim: %+v, %v", got, err)
	}
	counts("after a named claim of the delayed one", 2, 0)
}

// AddRef counts per host, never below zero, in an existing pool only.
func testAddRef(t *testing.T, s pool.Store) {
	c := ctx(t)
	seeded(t, s)
	for i, step := range []struct {
		host  string
		delta int
		want  int
	}{{"h1", 1, 1}, {"h1", 1, 2}, {"h2", 1, 1}, {"h1", -1, 1}, {"h1", -1, 0}, {"h1", -1, 0}} {
		if n, err := s.AddRef(c, subnet, step.host, step.delta, strconv.Itoa(i)); err != nil || n != step.want {
			t.Fatalf("AddRef(%s, %+d): %d, %v; want %d", step.host, step.delta, n, err, step.want)
		}
	}
	if _, err := s.AddRef(c, netip.MustParsePrefix("198.19.0.0/24"), "h1", 1, "missing"); !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("AddRef in a missing pool: %v, want ErrUnknownPool", err)
	}
}

// A sticky name is bound with its first claim, refuses a second binding,
// stays with the idle record and goes with it.
func testSticky(t *testing.T, s pool.Store) {
	c := ctx(t)
	seeded(t, s)
	if _, ok, err := s.Binding(c, subnet, "db"); err != nil || ok {
		t.Fatalf("Binding before any: ok=%v, %v", ok, err)
	}
	db := container("h1", "02:42:00:00:00:01")
	db.Sticky = "db"
	if got, err := s.Claim(c, subnet, a1, db, false); err != nil || !got.Taken {
		t.Fatalf("sticky claim: %+v, %v", got, err)
	}
	if b, ok, err := s.Binding(c, subnet, "db"); err != nil || !ok || b != a1 {
		t.Fatalf("Binding: %s %v, %v; want %s", b, ok, err, a1)
	}
	again := container("h2", "02:42:00:00:00:02")
	again.Sticky = "db"
	if got, err := s.Claim(c, subnet, a2, again, false); err != nil || got.Taken || got.Bound != a1 {
		t.Fatalf("second claim of the name: %+v, %v; want refused with Bound %s", got, err, a1)
	}
	e := entry(t, s, a1)
	idle := e.Used.Vacated(time.Now().UTC())
	if idle == nil || idle.Kind != pool.KindReserved || idle.Sticky != "db" {
		t.Fatalf("the released record: %+v; want an idle binding", idle)
	}
	if _, ok, err := s.Swap(c, subnet, e, pool.State{Used: idle}); err != nil || !ok {
		t.Fatalf("release to the idle binding: ok=%v, %v", ok, err)
	}
	if b, ok, err := s.Binding(c, subnet, "db"); err != nil || !ok || b != a1 {
		t.Fatalf("Binding while idle: %s %v, %v", b, ok, err)
	}
	if _, ok, err := s.Swap(c, subnet, entry(t, s, a1), pool.State{Free: true}); err != nil || !ok {
		t.Fatalf("ending the binding: ok=%v, %v", ok, err)
	}
	if _, ok, err := s.Binding(c, subnet, "db"); err != nil || ok {
		t.Fatalf("Binding after its record went: ok=%v, %v", ok, err)
	}
}
