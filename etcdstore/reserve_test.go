package etcdstore_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// TestReservedAndAnycastOnEtcd: a floating address moves between hosts,
// gc's compare-guarded release returns it to its reservation, anycast is
// held once per host, and every step leaves etcd consistent (owner index
// included).
func TestReservedAndAnycastOnEtcd(t *testing.T) {
	_, s, h, n := attachedPool(t, "198.18.0.0/24", "198.18.0.128/25")
	ctx := ctxT(t, time.Minute)
	g := pool.New(s, pool.Config{Host: "g", ReuseDelay: time.Hour})
	if err := g.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	op := pool.New(s, pool.Config{Host: "operator"})
	vip := netip.MustParseAddr("198.18.0.10") // outside the range: reservable all the same
	checkPool := func(when string) {
		t.Helper()
		snap, err := s.Snapshot(ctx, n.Subnet)
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Check(snap); len(got) != 0 {
			t.Fatalf("%s: %+v", when, got)
		}
	}
	if _, err := op.Reserve(ctx, n.Subnet, vip, "web"); err != nil {
		t.Fatal(err)
	}
	web := pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:0a", Endpoint: "web"}
	if got, err := h.Allocate(ctx, n, vip, web); err != nil || got != vip {
		t.Fatalf("--ip on h: %s, %v", got, err)
	}
	if a, held, err := s.Owned(ctx, n.Subnet, "h/"+web.MAC); err != nil || !held || a != vip {
		t.Fatalf("owner index: %s %v %v", a, held, err)
	}
	checkPool("held by h")
	if _, err := g.Allocate(ctx, n, vip, web); !errors.Is(err, pool.ErrUnavailable) || !strings.Contains(err.Error(), `container of host "h"`) {
		t.Fatalf("--ip on g while h holds it: %v", err)
	}
	if _, err := h.Release(ctx, n.Subnet, vip); err != nil {
		t.Fatal(err)
	}
	if got, err := g.Allocate(ctx, n, vip, web); err != nil || got != vip {
		t.Fatalf("--ip on g after h released it: %s, %v", got, err)
	}

	// g's dockerd lost the release: gc returns it to the reservation.
	cen, err := s.Census(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range cen.Used {
		if u.Addr != vip {
			continue
		}
		if ok, err := pool.New(s, pool.Config{Host: "operator"}).ReleaseListed(ctx, u.Subnet, u.Addr, u.Rev); !ok || err != nil {
			t.Fatalf("gc release: %v %v", ok, err)
		}
	}
	e, err := s.Entry(ctx, n.Subnet, vip)
	if err != nil || e.Free || e.Used == nil || e.Used.Kind != pool.KindReserved || e.Used.Reservation != "web" {
		t.Fatalf("after gc: %+v, %v; want the idle reservation", e, err)
	}
	checkPool("after gc")

	// Anycast: one hold per host, a release drops only its host.
	acast := netip.MustParseAddr("198.18.0.200")
	if _, err := op.AddAnycast(ctx, n.Subnet, acast); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*pool.Pools{h, g} {
		if got, err := p.Allocate(ctx, n, acast, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:c8"}); err != nil || got != acast {
			t.Fatalf("anycast on %s: %s, %v", p.Host(), got, err)
		}
	}
	if _, err := h.Allocate(ctx, n, acast, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:c9"}); !errors.Is(err, pool.ErrUnavailable) {
		t.Fatalf("second anycast endpoint on h: %v", err)
	}
	if _, err := h.Release(ctx, n.Subnet, acast); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, acast); e.Used == nil || e.Used.HolderList() != "g" {
		t.Fatalf("after h's release: %+v", e.Used)
	}
	checkPool("anycast")
	if err := op.RemoveAnycast(ctx, n.Subnet, acast, true); err != nil {
		t.Fatal(err)
	}
	if _, err := op.Unreserve(ctx, n.Subnet, vip); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, vip); e.Used != nil || e.Free {
		t.Fatalf("unreserved unseeded %s: %+v; want neither used nor free", vip, e)
	}
	checkPool("all removed")
}

// TestSwapKeepsOneAddressPerEndpoint: taking a reservation with a swap
// writes the endpoint's owner index, so the swap must fail if the
// endpoint holds another address (as a claim would), naming it.
func TestSwapKeepsOneAddressPerEndpoint(t *testing.T) {
	_, s, h, n := attachedPool(t, "198.18.0.0/24", "")
	ctx := ctxT(t, time.Minute)
	ep := pool.Allocation{Kind: pool.KindContainer, Host: "h", MAC: "02:42:c6:12:00:05"}
	// A named address: a random pick could be the reservation's own.
	held, err := h.Allocate(ctx, n, netip.MustParseAddr("198.18.0.5"), ep)
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.18.0.9")
	if _, err := h.Reserve(ctx, n.Subnet, vip, "web"); err != nil {
		t.Fatal(err)
	}
	cur, err := s.Entry(ctx, n.Subnet, vip)
	if err != nil {
		t.Fatal(err)
	}
	taken := ep
	taken.Reservation = "web"
	_, ok, err := s.Swap(ctx, n.Subnet, cur, pool.State{Used: &taken})
	if ok || !errors.Is(err, pool.ErrUnavailable) || !strings.Contains(err.Error(), "already holds "+held.String()) {
		t.Fatalf("swap for an endpoint holding %s: ok=%v, %v", held, ok, err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, vip); e.Used == nil || e.Used.Kind != pool.KindReserved {
		t.Fatalf("the refused swap changed %s: %+v", vip, e.Used)
	}
}
