package main

import (
	"net/netip"
	"strings"
	"testing"
)

// TestInitRangeIPv6: v6 ranges are seeded like v4 ones, up to the pool
// limit; a whole /64 is refused naming a range that can be seeded.
func TestInitRangeIPv6(t *testing.T) {
	c := newCtl(t)
	const subnet = "2001:db8:1::/64"
	// A CIDR at the subnet's start loses the subnet-router anycast address.
	got := okJSON[initRangeJSON](c, "init-range", "--subnet", subnet, "--range", "2001:db8:1::/120",
		"--range", "2001:db8:1::1:0-2001:db8:1::1:f", "--exclude", "2001:db8:1::10-2001:db8:1::1f")
	want := []string{"2001:db8:1::1-2001:db8:1::f", "2001:db8:1::20-2001:db8:1::ff", "2001:db8:1::1:0-2001:db8:1::1:f"}
	if got.Added != 255-16+16 || strings.Join(got.Ranges, ",") != strings.Join(want, ",") {
		t.Fatalf("init-range: %+v, want added %d, ranges %v", got, 255, want)
	}
	_, store := c.pools("x")
	free, err := store.Free(ctx(t), netip.MustParsePrefix(subnet))
	if err != nil || len(free) != 255 {
		t.Fatalf("%d free addresses (%v), want 255", len(free), err)
	}
	for _, a := range free {
		if a == netip.MustParseAddr("2001:db8:1::") || a == netip.MustParseAddr("2001:db8:1::15") {
			t.Errorf("%s is free, but it is excluded or not usable", a)
		}
	}
	if again := okJSON[initRangeJSON](c, "init-range", "--subnet", subnet, "--range", "2001:db8:1::1:0/124"); again.Added != 0 {
		t.Fatalf("re-run added %d, want 0", again.Added)
	}

	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"whole /64", "more than 2^63 addresses, more than the limit of 2097152 (each free address is one etcd key", []string{"--subnet", "2001:db8:2::/64", "--range", "2001:db8:2::/64"}},
		{"names a range to seed", "seed a smaller range, such as 2001:db8:2::/107", []string{"--subnet", "2001:db8:2::/64", "--range", "2001:db8:2::/96"}},
		{"v4 range in v6 subnet", `range "198.18.0.0/24" is not inside subnet 2001:db8:2::/64`, []string{"--subnet", "2001:db8:2::/64", "--range", "198.18.0.0/24"}},
		{"anycast address", "subnet-router anycast address", []string{"--subnet", "2001:db8:2::/64", "--range", "2001:db8:2::-2001:db8:2::9"}},
		{"outside", "is outside subnet 2001:db8:2::/64", []string{"--subnet", "2001:db8:2::/64", "--range", "2001:db8:3::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.fails(tc.want, append([]string{"init-range"}, tc.args...)...)
		})
	}
	if ls := okJSON[[]poolJSON](c, "pool", "ls"); len(ls) != 1 {
		t.Errorf("refused init-range created pools: %+v", ls)
	}

	// The hosts' own v6 addresses, but not a whole /64 of them.
	if rec := okJSON[[]hostAddrJSON](c, "host-range", "--subnet", subnet, "--range", "2001:db8:1::11-2001:db8:1::13"); len(rec) != 3 || rec[2].Address != "2001:db8:1::13" || rec[2].Result != "recorded" {
		t.Fatalf("host-range: %+v", rec)
	}
	c.fails("the ranges hold more than 2^63 addresses; host-range records at most 65536 per run", "host-range", "--subnet", subnet, "--range", subnet)
}
