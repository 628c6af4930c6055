package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// TestIPv6SeedLimits: a /64 is never seeded whole (one etcd key per
// address); every refusal names a range that can be.
func TestIPv6SeedLimits(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, subnet, ipRange string
		cfg                   Config
		seeded                string // the pool's ranges afterwards, or
		err                   []string
	}{
		{name: "ip-range /112", subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::1:0/112", seeded: "2001:db8:1::1:0-2001:db8:1::1:ffff"},
		{name: "ip-range at the start loses the anycast address", subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::/120", seeded: "2001:db8:1::1-2001:db8:1::ff"},
		{name: "small subnet, no ip-range", subnet: "2001:db8:1::/120", seeded: "2001:db8:1::1-2001:db8:1::ff"},
		{name: "a /64 without ip-range", subnet: "2001:db8:1::/64",
			err: []string{"more than 2^63 addresses are too many to seed on first use (limit 65536", "--ip-range such as 2001:db8:1::/112",
				"ipamctl init-range --subnet 2001:db8:1::/64 --range 2001:db8:1::/112"}},
		{name: "a /48", subnet: "2001:db8::/48", err: []string{"more than 2^63 addresses", "--ip-range such as 2001:db8::/112"}},
		{name: "ip-range /96", subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::/96", err: []string{"4294967295 addresses", "such as 2001:db8:1::/112"}},
		{name: "require-init names a range init-range takes", subnet: "2001:db8:1::/64", cfg: Config{RequireInit: true},
			err: []string{"ipamctl init-range --subnet 2001:db8:1::/64 --range 2001:db8:1::/112"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newMemStore()
			tc.cfg.Host = "a"
			n := mustNetwork(t, tc.subnet, tc.ipRange)
			err := New(s, tc.cfg).Attach(ctx, n)
			if tc.err != nil {
				for _, want := range tc.err {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("Attach(%s) = %v, want an error containing %q", n, err, want)
					}
				}
				if _, ok := s.pools[n.Subnet]; ok {
					t.Fatalf("a refused pool was created")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := FormatRanges(s.pools[n.Subnet].meta.Ranges); got != tc.seeded {
				t.Fatalf("seeded %s, want %s", got, tc.seeded)
			}
		})
	}

	p := New(newMemStore(), Config{Host: "a"})
	subnet := netip.MustParsePrefix("2001:db8:2::/64")
	for _, r := range []string{"2001:db8:2::1-2001:db8:2:0:ffff:ffff:ffff:ffff", "2001:db8:2::1-2001:db8:2::40:0"} {
		set, err := ParseRanges(r)
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.AddRanges(ctx, subnet, set, nil)
		if err == nil || !strings.Contains(err.Error(), "more than the limit of 2097152") || !strings.Contains(err.Error(), "such as 2001:db8:2::/107") {
			t.Fatalf("AddRanges(%s) = %v, want the limit and a /107 named", r, err)
		}
	}
}

// TestIPv6Allocation: the rules are the same as for IPv4, on the seeded
// ranges of a /64.
func TestIPv6Allocation(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "2001:db8:1::/64", "2001:db8:1::1:0/124")
	ps := hosts(t, s, n, "a", "b")

	gw := netip.MustParseAddr("2001:db8:1::11")
	if got, err := ps[0].Gateway(ctx, n, gw, true); err != nil || got != gw {
		t.Fatalf("gateway: %s, %v", got, err)
	}
	if _, err := ps[1].Gateway(ctx, n, gw, false); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `gateway of host "a"`) {
		t.Fatalf("host b taking host a's gateway: %v", err)
	}
	router := netip.MustParseAddr("2001:db8:1::1")
	for _, p := range ps {
		if err := p.Aux(ctx, n, router); err != nil {
			t.Fatalf("aux by %s: %v", p.Host(), err)
		}
	}
	if err := ps[0].Aux(ctx, n, netip.MustParseAddr("2001:db8:1::")); err == nil || !strings.Contains(err.Error(), "subnet-router anycast") {
		t.Fatalf("aux on the anycast address: %v", err)
	}

	holder := map[netip.Addr]*Pools{}
	for i := range 16 {
		a, err := ps[i%2].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: fmt.Sprintf("02:42:00:00:00:%02x", i)})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if holder[a] != nil || !n.Range().Contains(a) {
			t.Fatalf("allocation %d gave %s: duplicate or outside %s", i, a, FormatRange(n.Range()))
		}
		holder[a] = ps[i%2]
	}
	if _, err := ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer}); !errors.Is(err, ErrNoFree) {
		t.Fatalf("exhausted: %v", err)
	}
	want := netip.MustParseAddr("2001:db8:1::1:5")
	if _, err := ps[1].Allocate(ctx, n, want, Allocation{Kind: KindContainer, MAC: "02:42:00:00:01:00"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("--ip6 of a used address: %v", err)
	}
	if ok, err := holder[want].Release(ctx, n.Subnet, want); err != nil || !ok {
		t.Fatalf("release of %s: %v %v", want, ok, err)
	}
	if mp := s.pools[n.Subnet]; len(mp.used) != 15+2 || len(mp.free) != 1 {
		t.Fatalf("after one release: %d used, %d free; want 15 containers, the gateway and the router used, 1 free", len(mp.used), len(mp.free))
	}
}
