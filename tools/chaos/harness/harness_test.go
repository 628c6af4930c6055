package harness

import (
	"net/netip"
	"testing"
	"time"
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

func TestParsePhase(t *testing.T) {
	p, err := ParsePhase("leader-kills:4000:leader-kill*3,follower-freeze:3s")
	if err != nil || p.Name != "leader-kills" || p.Ops != 4000 || len(p.Faults) != 4 || p.Faults[3] != "follower-freeze" || p.MaxP99 != 3*time.Second {
		t.Fatalf("ParsePhase = %+v, %v", p, err)
	}
	if got := p.String(); got != "leader-kills:4000:leader-kill*3,follower-freeze:3s" {
		t.Errorf("String = %q", got)
	}
	if p.failuresAllowed() {
		t.Error("etcd faults allow failures")
	}
	if p, err := ParsePhase("load:100:"); err != nil || len(p.Faults) != 0 {
		t.Errorf("no faults: %+v, %v", p, err)
	}
	if p, _ := ParsePhase("x:1:plugin-kill"); !p.failuresAllowed() {
		t.Error("plugin kills allow no failures")
	}
	for _, bad := range []string{"x:1", "x:y:leader-kill", "x:1:nospace", "x:1:leader-kill*0", "x:1:leader-kill:soon", ":1:"} {
		if _, err := ParsePhase(bad); err == nil {
			t.Errorf("ParsePhase(%q) took it", bad)
		}
	}
}

func TestNearestFault(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	fs := []*faultRecord{
		{kind: "leader-kill", target: "etcd1 (the leader)", start: t0, end: t0.Add(3 * time.Second)},
		{kind: "leader-freeze", target: "etcd2 (the leader)", start: t0.Add(10 * time.Second), end: t0.Add(13 * time.Second)},
	}
	for _, c := range []struct {
		at   time.Duration
		want string
	}{
		{time.Second, "1.00s after the leader-kill of etcd1 (the leader) at 12:00:00.000, while it lasted"},
		{4 * time.Second, "4.00s after the leader-kill of etcd1 (the leader) at 12:00:00.000"},
		{9 * time.Second, "1.00s before the leader-freeze of etcd2 (the leader) at 12:00:10.000"},
	} {
		if got := nearestFault(fs, t0.Add(c.at)); got != c.want {
			t.Errorf("at +%s: %q, want %q", c.at, got, c.want)
		}
	}
}
