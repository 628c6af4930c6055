package etcdstore

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// Key order must be address order: claims read free neighbours and seeding
// reads a batch back as one key range.
func TestAddrKeysSortInAddressOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		var a4, b4 [4]byte
		var a6, b6 [16]byte
		for i := range a4 {
			a4[i], b4[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		for i := range a6 {
			a6[i], b6[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		for _, pair := range [][2]netip.Addr{
			{netip.AddrFrom4(a4), netip.AddrFrom4(b4)},
			{netip.AddrFrom16(a6), netip.AddrFrom16(b6)},
		} {
			a, b := pair[0], pair[1]
			if (a.Compare(b) < 0) != (addrKey(a) < addrKey(b)) {
				t.Fatalf("%s < %s but keys %q, %q disagree", a, b, addrKey(a), addrKey(b))
			}
			back, err := parseAddrKey("x/" + addrKey(a))
			if err != nil || back != a {
				t.Fatalf("parseAddrKey(%q) = %s, %v", addrKey(a), back, err)
			}
		}
	}
	for _, bad := range []string{"x/1.2.3", "x/256.000.000.001", "x/a.b.c.d"} {
		if _, err := parseAddrKey(bad); err == nil {
			t.Errorf("parseAddrKey(%q) accepted", bad)
		}
	}
}

func TestSubnetKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"198.18.0.0/16", "10.0.0.0/8", "2001:db8::/64", "fd00:1::/112"} {
		p := netip.MustParsePrefix(s)
		if back, err := parseSubnetKey(subnetKey(p)); err != nil || back != p {
			t.Errorf("parseSubnetKey(%q) = %s, %v", subnetKey(p), back, err)
		}
	}
	for _, bad := range []string{"198.18.0.0", "198.18.0.0-", "x-16"} {
		if _, err := parseSubnetKey(bad); err == nil {
			t.Errorf("parseSubnetKey(%q) accepted", bad)
		}
	}
}
