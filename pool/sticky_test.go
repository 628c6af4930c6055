package pool

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSticky: on a sticky network, a container's address is bound to its
// name: kept out of automatic allocation while no container has it, given
// back to the next container of that name on any host at once (it is the
// name's own: no reuse delay), refused to a second one while the first
// holds it, naming the holder.
func TestSticky(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/29", "") // .1-.6
	ps := hosts(t, s, n, "a", "b")
	a, b := ps[0], ps[1]
	if err := a.Set(ctx, n.Subnet, Settings{ReuseDelay: ptr(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ctr := func(mac, name string) Allocation {
		return Allocation{Kind: KindContainer, MAC: mac, Endpoint: name, Sticky: name}
	}

	db, err := a.Allocate(ctx, n, netip.Addr{}, ctr("02:42:00:00:00:01", "db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		step func() (netip.Addr, error)
		want string // the address, "db" for db's, or "" with err
		err  string
	}{
		{"a second db while the first runs, on another host", func() (netip.Addr, error) {
			return b.Allocate(ctx, n, netip.Addr{}, ctr("02:42:00:00:00:02", "db"))
		}, "", `in use: container of host "a"`},
		{"the first db stops", func() (netip.Addr, error) { _, err := a.Release(ctx, n.Subnet, db); return db, err }, "db", ""},
		{"db again, on another host, within the reuse delay", func() (netip.Addr, error) {
			return b.Allocate(ctx, n, netip.Addr{}, ctr("02:42:00:00:00:03", "db"))
		}, "db", ""},
		{"db stops there", func() (netip.Addr, error) { _, err := b.Release(ctx, n.Subnet, db); return db, err }, "db", ""},
		{"db back on the first host", func() (netip.Addr, error) {
			return a.Allocate(ctx, n, netip.Addr{}, ctr("02:42:00:00:00:04", "db"))
		}, "db", ""},
	} {
		got, err := tc.step()
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Fatalf("%s: %s, %v; want an error saying %q", tc.name, got, err, tc.err)
		case tc.err == "" && err != nil:
			t.Fatalf("%s: %v", tc.name, err)
		case tc.want == "db" && got != db:
			t.Fatalf("%s: got %s, want db's %s", tc.name, got, db)
		}
	}
	// While db is away its address is out of automatic allocation: the
	// other five go to others, then the pool is exhausted.
	if _, err := a.Release(ctx, n.Subnet, db); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		got, err := b.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:01:0" + string(rune('0'+i))})
		if err != nil || got == db {
			t.Fatalf("automatic allocation %d: %s, %v; want any address but db's %s", i, got, err, db)
		}
	}
	if _, err := b.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:01:09"}); !errors.Is(err, ErrNoFree) {
		t.Fatalf("with only db's address left: %v, want ErrNoFree", err)
	}
	if got, err := b.Allocate(ctx, n, netip.Addr{}, ctr("02:42:00:00:00:05", "db")); err != nil || got != db {
		t.Fatalf("db with the pool otherwise full: %s, %v", got, err)
	}
}

// TestStickyRace: two hosts starting the same new name at once: one gets
// an address bound to it, the other is refused naming the winner, and no
// address is left taken for the loser.
func TestStickyRace(t *testing.T) {
	ctx := context.Background()
	for round := range 50 {
		s := newMemStore()
		n := mustNetwork(t, "198.18.0.0/28", "")
		ps := hosts(t, s, n, "a", "b")
		var wg sync.WaitGroup
		got := make([]netip.Addr, 2)
		errs := make([]error, 2)
		for i, p := range ps {
			wg.Go(func() {
				got[i], errs[i] = p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:0" + string(rune('1'+i)), Sticky: "web"})
			})
		}
		wg.Wait()
		won := 0
		for i := range 2 {
			switch {
			case errs[i] == nil:
				won++
			case !errors.Is(errs[i], ErrUnavailable) || !strings.Contains(errs[i].Error(), `bound to name "web"`):
				t.Fatalf("round %d: the loser's error %v; want it to name the holder", round, errs[i])
			}
		}
		used := 0
		for range s.pools[n.Subnet].used {
			used++
		}
		if won != 1 || used != 1 {
			t.Fatalf("round %d: %d won (%v), %d addresses used; want 1 and 1", round, won, errs, used)
		}
	}
}

// TestStickyEnd: ipamctl reserve rm ends a binding: an idle one's address
// is freed (the name then binds anew), a held one stays with its
// container, unbound, and its release frees it.
func TestStickyEnd(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/29", "")
	p := hosts(t, s, n, "a")[0]
	op := New(s, Config{Host: "operator"})
	db, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01", Sticky: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := op.Unreserve(ctx, n.Subnet, db); err != nil || u == nil || u.Sticky != "" || u.Kind != KindContainer {
		t.Fatalf("reserve rm of a held binding: %+v, %v; want the container, unbound", u, err)
	}
	if _, ok, _ := s.Binding(ctx, n.Subnet, "db"); ok {
		t.Fatal("the binding outlived reserve rm")
	}
	if _, err := p.Release(ctx, n.Subnet, db); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, db); e.Used != nil || !e.Free {
		t.Fatalf("after the unbound container's release: %+v; want it free", e)
	}
	again, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02", Sticky: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Release(ctx, n.Subnet, again); err != nil {
		t.Fatal(err)
	}
	if _, err := op.Evict(ctx, n.Subnet, again, false, ""); err == nil || !strings.Contains(err.Error(), `bound to name "db"`) {
		t.Fatalf("ipamctl release of an idle binding: %v; want a refusal naming the binding and reserve rm", err)
	}
	if u, err := op.Unreserve(ctx, n.Subnet, again); err != nil || u != nil {
		t.Fatalf("reserve rm of an idle binding: %+v, %v; want it freed", u, err)
	}
	if _, ok, _ := s.Binding(ctx, n.Subnet, "db"); ok {
		t.Fatal("the idle binding outlived reserve rm")
	}
}

// TestStickyExpire: gc ends an idle binding only if its record is the one
// it listed: a container of the name that took it meanwhile keeps it.
func TestStickyExpire(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/29", "")
	p := hosts(t, s, n, "a")[0]
	gc := New(s, Config{Host: "operator"})
	db, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01", Sticky: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := gc.ExpireBinding(ctx, n.Subnet, db, 0); ok || err != nil {
		t.Fatalf("expiring a held binding: %v, %v", ok, err)
	}
	if _, err := p.Release(ctx, n.Subnet, db); err != nil {
		t.Fatal(err)
	}
	listed, _ := s.Entry(ctx, n.Subnet, db)
	if _, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02", Sticky: "db"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := gc.ExpireBinding(ctx, n.Subnet, db, listed.Version.Used); ok || err != nil {
		t.Fatalf("expiring a binding taken again since listed: %v, %v", ok, err)
	}
	if _, err := p.Release(ctx, n.Subnet, db); err != nil {
		t.Fatal(err)
	}
	listed, _ = s.Entry(ctx, n.Subnet, db)
	if ok, err := gc.ExpireBinding(ctx, n.Subnet, db, listed.Version.Used); !ok || err != nil {
		t.Fatalf("expiring the idle binding: %v, %v", ok, err)
	}
	if _, ok, _ := s.Binding(ctx, n.Subnet, "db"); ok {
		t.Fatal("the binding outlived its expiry")
	}
}
