package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// FuzzRules runs random sequences of requests from three hosts and an
// operator against one small pool and checks after each step that nothing
// is lost or doubled: every seeded address is free or used (never both,
// never neither), free addresses are all seeded, the used containers are
// exactly those the hosts were granted and have not released, reserved
// and anycast addresses never become free by themselves, each host
// holds an anycast address at most once, and every sticky name is bound to
// exactly the record that carries it.
func FuzzRules(f *testing.F) {
	f.Add(false, []byte{0, 0, 0, 1, 1, 3, 2, 2, 9, 3, 0, 3, 4, 1, 9, 5, 0, 12, 3, 2, 9})
	f.Add(false, []byte{2, 0, 1, 2, 1, 1, 3, 0, 1, 3, 1, 1, 3, 0, 1, 0, 2, 0, 0, 2, 0})
	f.Add(false, []byte{6, 0, 2, 2, 0, 2, 2, 1, 2, 4, 0, 2, 2, 1, 2, 5, 0, 2})
	f.Add(false, []byte{7, 0, 3, 1, 0, 3, 1, 1, 3, 4, 0, 3, 1, 1, 3, 8, 0, 3, 4, 1, 3, 0, 0, 0})
	f.Add(false, []byte{9, 0, 4, 1, 0, 4, 1, 1, 4, 1, 2, 4, 1, 0, 5, 4, 1, 4, 10, 0, 4, 10, 128, 4})
	f.Add(true, []byte{0, 0, 0, 1, 1, 3, 2, 2, 9, 3, 0, 3, 4, 1, 9, 5, 0, 12, 3, 2, 9})
	f.Add(true, []byte{6, 0, 2, 2, 0, 2, 2, 1, 2, 4, 0, 2, 2, 1, 2, 5, 0, 2})
	f.Add(true, []byte{7, 0, 3, 1, 0, 3, 1, 1, 3, 4, 0, 3, 1, 1, 3, 8, 0, 3, 4, 1, 3, 0, 0, 0})
	f.Add(true, []byte{9, 0, 4, 1, 0, 4, 1, 1, 4, 1, 2, 4, 1, 0, 5, 4, 1, 4, 10, 0, 4, 10, 128, 4})
	f.Fuzz(func(t *testing.T, v6 bool, ops []byte) {
		ctx := context.Background()
		s := newMemStore()
		n := mustNetwork(t, "198.18.0.0/28", "198.18.0.0/29") // seeds .1-.7; .8-.14 stay outside
		if v6 {
			n = mustNetwork(t, "2001:db8::/124", "2001:db8::/125") // the same: ::1-::7, ::8-::e outside
		}
		ps := hosts(t, s, n, "a", "b", "c")
		// Picks from a source seeded by the input, so a failure replays.
		src := rand.New(rand.NewPCG(uint64(len(ops)), 1))
		for _, p := range ps {
			p.randN = src.Uint64N
		}
		granted := map[netip.Addr]string{} // container address -> host
		marked := map[netip.Addr]bool{}    // reserved or anycast: never freed but by the operator
		op := New(s, Config{Host: "operator"})
		for i := 0; i+2 < len(ops) && i < 300; i += 3 {
			p := ps[int(ops[i+1])%len(ps)]
			addr := AddrAt(HostRange(n.Subnet), uint64(ops[i+2])%14)
			switch ops[i] % 13 {
			case 0:
				if a, err := p.Allocate(ctx, n, netip.Addr{}, fuzzEndpoint(ops[i+2]%4)); err == nil {
					granted[a] = p.Host()
				}
			case 1:
				// An anycast hold is no container's own address.
				if a, err := p.Allocate(ctx, n, addr, fuzzEndpoint(ops[i+1]%4)); err == nil && isContainer(s, n, a) {
					granted[a] = p.Host()
				}
			case 2:
				_, _ = p.Gateway(ctx, n, addr, ops[i+1]&0x40 != 0) // refusals are legitimate here
			case 3:
				_ = p.Aux(ctx, n, addr)
			case 4:
				if ok, err := p.Release(ctx, n.Subnet, addr); ok && err == nil && granted[addr] == p.Host() {
					delete(granted, addr)
				}
			case 5:
				if was, err := p.Evict(ctx, n.Subnet, addr, ops[i+1]&0x80 != 0, ""); err == nil && was != nil {
					delete(granted, addr)
				}
			case 6:
				_, _ = p.AddHostAddr(ctx, n.Subnet, addr)
			case 7:
				if _, err := op.Reserve(ctx, n.Subnet, addr, fmt.Sprint("r", ops[i+1]%2)); err == nil {
					marked[addr] = true
				}
			case 8:
				if u, err := op.Unreserve(ctx, n.Subnet, addr); err == nil && (u == nil || u.Kind != KindAnycast) {
					delete(marked, addr)
				}
			case 9:
				if _, err := op.AddAnycast(ctx, n.Subnet, addr); err == nil {
					marked[addr] = true
				}
			case 10:
				if err := op.RemoveAnycast(ctx, n.Subnet, addr, ops[i+1]&0x80 != 0); err == nil {
					delete(marked, addr)
				}
			case 11:
				// A container of a sticky network, by name.
				a := fuzzEndpoint(ops[i+2] % 4)
				a.Sticky = fmt.Sprint("s", ops[i+2]%3)
				if got, err := p.Allocate(ctx, n, netip.Addr{}, a); err == nil {
					granted[got] = p.Host()
				}
			case 12:
				// gc ends an idle binding it listed.
				if e, err := s.Entry(ctx, n.Subnet, addr); err == nil {
					_, _ = op.ExpireBinding(ctx, n.Subnet, addr, e.Version.Used)
				}
			}
			checkInvariants(t, s, n, granted)
			for a := range marked {
				if e, _ := s.Entry(ctx, n.Subnet, a); e.Free || e.Used == nil {
					t.Fatalf("reserved or anycast %s was freed: %+v", a, e)
				}
			}
		}
	})
}

// fuzzEndpoint gives a few endpoints, so requests repeat (retries) and
// collide: known by MAC, by name only (a driver asking for no MAC), or by
// neither (not indexed).
func fuzzEndpoint(n byte) Allocation {
	a := Allocation{Kind: KindContainer}
	switch {
	case n == 0:
	case n%2 == 0:
		a.Endpoint = "ep" + string('0'+rune(n))
	default:
		a.MAC = "02:42:00:00:00:0" + string('0'+rune(n))
	}
	return a
}

func checkInvariants(t *testing.T, s *memStore, n Network, granted map[netip.Addr]string) {
	t.Helper()
	mp := s.pools[n.Subnet]
	for name, a := range mp.bound {
		if u, used := mp.used[a]; !used || u.a.Sticky != name {
			t.Fatalf("name %q is bound to %s, whose record is %+v", name, a, mp.used[a])
		}
	}
	for a, u := range mp.used {
		if u.a.Sticky != "" && mp.bound[u.a.Sticky] != a {
			t.Fatalf("%s carries name %q, bound to %s", a, u.a.Sticky, mp.bound[u.a.Sticky])
		}
	}
	for a := range mp.free {
		if _, used := mp.used[a]; used {
			t.Fatalf("%s is both free and used", a)
		}
		if !mp.meta.Ranges.Contains(a) {
			t.Fatalf("%s is free but outside the seeded ranges", a)
		}
	}
	for _, r := range mp.meta.Ranges.Ranges() {
		for a := r.From(); !r.To().Less(a); a = a.Next() {
			_, free := mp.free[a]
			_, used := mp.used[a]
			if !free && !used {
				t.Fatalf("%s is lost: seeded but neither free nor used", a)
			}
		}
	}
	containers := 0
	for a, u := range mp.used {
		switch u.a.Kind {
		case KindContainer:
			containers++
			if granted[a] != u.a.Host {
				t.Fatalf("%s is used by a container of %q, but was granted to %q", a, u.a.Host, granted[a])
			}
		case KindHost:
			if len(u.a.Holders) > 1 || (len(u.a.Holders) == 1 && u.a.Holders[u.a.Host] == 0) {
				t.Fatalf("host address %s of %q is used as gateway by %v", a, u.a.Host, u.a.Holders)
			}
		case KindReserved:
			if u.a.Reservation == "" && u.a.Sticky == "" || u.a.Host != "" || len(u.a.Holders) > 0 {
				t.Fatalf("idle reservation %s: %+v", a, u.a)
			}
		case KindAnycast:
			for h, n := range u.a.Holders {
				if _, ok := u.a.MACs[h]; n != 1 || !ok || len(u.a.MACs) != len(u.a.Holders) {
					t.Fatalf("anycast %s: holders %v, macs %v; want each host once, with its endpoint", a, u.a.Holders, u.a.MACs)
				}
			}
		case KindGateway, KindAux:
			if len(u.a.Holders) == 0 || u.a.Holders[u.a.Host] == 0 {
				t.Fatalf("%s is a %s with holders %v and owner %q", a, u.a.Kind, u.a.Holders, u.a.Host)
			}
			if u.a.Kind == KindGateway && len(u.a.Holders) != 1 {
				t.Fatalf("gateway %s is shared by %v", a, u.a.Holders)
			}
		}
	}
	for key, a := range mp.owners {
		if u, ok := mp.used[a]; !ok || u.a.Owner() != key {
			t.Fatalf("owner index %s -> %s does not match the used entry %+v", key, a, u.a)
		}
	}
	indexed := 0
	for _, u := range mp.used {
		if u.a.Owner() != "" {
			indexed++
		}
	}
	if indexed != len(mp.owners) {
		t.Fatalf("%d indexed container entries, %d owner keys", indexed, len(mp.owners))
	}
	if containers != len(granted) {
		t.Fatalf("%d container entries, %d granted", containers, len(granted))
	}
}

func isContainer(s *memStore, n Network, a netip.Addr) bool {
	e, _ := s.Entry(context.Background(), n.Subnet, a)
	return e.Used != nil && e.Used.Kind == KindContainer
}
