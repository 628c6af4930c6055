package harness

import (
	"net/netip"
	"testing"
)

func TestKeys(t *testing.T) {
	a := netip.MustParseAddr("198.18.4.1")
	if got := addrKey(a); got != "198.018.004.001" {
		t.Errorf("addrKey = %q", got)
	}
	if got, err := parseAddrKey("/talkingdata/ipam/free/198.18.0.0-16/198.018.004.001"); err != nil || got != a {
		t.Errorf("parseAddrKey = %v, %v", got, err)
	}
	for _, bad := range []string{"x/198.18.4.1", "x/198.018.004", "x/198.018.004.0a1", "x/256.000.000.000"} {
		if _, err := parseAddrKey(bad); err == nil {
			t.Errorf("parseAddrKey(%q) took it", bad)
		}
	}
	if got := subnetKey(netip.MustParsePrefix("198.18.0.0/16")); got != "198.18.0.0-16" {
		t.Errorf("subnetKey = %q", got)
	}
}

func TestExpandRanges(t *testing.T) {
	got, err := expandRanges("198.18.4.0-198.18.7.255")
	if err != nil || len(got) != 1024 || !got[netip.MustParseAddr("198.18.7.255")] || got[netip.MustParseAddr("198.18.8.0")] {
		t.Fatalf("expandRanges: %d addresses, %v", len(got), err)
	}
	got, err = expandRanges("198.18.0.1,198.18.0.5-198.18.0.6")
	if err != nil || len(got) != 3 {
		t.Fatalf("expandRanges: %v, %v", got, err)
	}
	for _, bad := range []string{"198.18.0.9-198.18.0.1", "x", "198.18.0.1-y"} {
		if _, err := expandRanges(bad); err == nil {
			t.Errorf("expandRanges(%q) took it", bad)
		}
	}
}

func TestBroadcast(t *testing.T) {
	p := netip.MustParsePrefix("198.18.0.0/16")
	if !isBroadcast(p, netip.MustParseAddr("198.18.255.255")) || isBroadcast(p, netip.MustParseAddr("198.18.7.255")) {
		t.Error("isBroadcast")
	}
}

// The holders map: a second holder while the first holds the address is a duplicate; a
// holder that released it first is not.
func TestHoldDuplicate(t *testing.T) {
	r := &runner{held: map[netip.Addr][]*endpoint{}, addrHist: map[netip.Addr][]string{}, stales: map[netip.Addr]*endpoint{}}
	r.cfg.fill()
	p := &plugin{name: "h1"}
	a := netip.MustParseAddr("198.18.4.1")
	e1, e2, e3 := &endpoint{mac: "m1", p: p}, &endpoint{mac: "m2", p: p}, &endpoint{mac: "m3", p: p}
	r.hold(a, e1)
	r.unhold(a, e1)
	r.hold(a, e2) // e1 let go first: fine
	if len(r.dups) != 0 {
		t.Fatalf("duplicates after a clean hand-over: %v", r.dups)
	}
	r.hold(a, e3)
	if len(r.dups) != 1 || len(r.held[a]) != 2 {
		t.Fatalf("a second holder: %d duplicates, holders %v", len(r.dups), r.held[a])
	}
	r.unhold(a, e2)
	r.unhold(a, e3)
	if len(r.held) != 0 {
		t.Fatalf("holders left: %v", r.held)
	}
}
