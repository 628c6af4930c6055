package bridgesetup

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var cfg = Config{NIC: "eth0", Bridge: "br0"}

// bridged is what snapshot must show after Setup, given the original.
func bridged(t *testing.T, orig snapshot) snapshot {
	t.Helper()
	want := snapshot{Addrs: []string{"br0 198.18.0.11/24", "br0 2001:db8::11/64"}}
	for _, l := range orig.Links {
		if strings.HasPrefix(l, "eth0 ") {
			want.Links = append(want.Links, strings.Replace(l, "master=", "master=br0", 1))
		}
	}
	want.Links = append(want.Links, "br0 bridge up=true master= mac="+hostMAC)
	// Every route, the kernel's included, is now on br0.
	for _, r := range orig.Routes {
		want.Routes = append(want.Routes, strings.Replace(r, " dev eth0 ", " dev br0 ", 1))
	}
	slices.Sort(want.Links)
	slices.Sort(want.Routes)
	return want
}

func TestPlan(t *testing.T) {
	l := newLab(t)
	steps, err := l.h.Plan(Config{NIC: "eth0"}) // br0 by default
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"create bridge br0 (mac " + hostMAC + ", mtu 1500)",
		"copy address 198.18.0.11/24 eth0 → br0",
		"copy address 2001:db8::11/64 eth0 → br0",
		"enslave eth0 to br0",
		"move route default via 198.18.0.12 eth0 → br0",
		"move route 198.19.5.0/24 via 198.18.0.13 metric 50 eth0 → br0",
		"move route 2001:db8:5::/64 via 2001:db8::12 eth0 → br0",
		"remove address 2001:db8::11/64 from eth0",
		"remove address 198.18.0.11/24 from eth0",
	}
	if got := details(steps); !slices.Equal(got, want) {
		t.Errorf("plan:\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
	// Planning changes nothing.
	before := l.snapshot()
	if _, err := l.h.Plan(cfg); err != nil {
		t.Fatal(err)
	}
	l.same("after Plan", before, l.snapshot())
	if steps, err := l.h.PlanTeardown(cfg); err != nil || len(steps) != 0 {
		t.Errorf("PlanTeardown without a bridge = %v, %v; want nothing to do", details(steps), err)
	}
}

func TestSetupAndTeardown(t *testing.T) {
	l := newLab(t)
	orig := l.snapshot()
	l.reachable()
	if _, err := l.h.Addrs("br0"); !errors.Is(err, ErrNoBridge) || err.Error() != "bridge br0 not found: run `ipamctl bridge setup --nic …` first" {
		t.Errorf("Addrs before setup: %v, want the advice", err)
	}
	layoutBefore, err := l.h.Layout(cfg)
	if err != nil {
		t.Fatal(err)
	}

	plan, err := l.h.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := l.h.Setup(cfg)
	if err != nil {
		t.Fatalf("Setup: %v\n%s", err, l.dump())
	}
	if !slices.Equal(details(steps), details(plan)) {
		t.Errorf("Setup did %q, planned %q", details(steps), details(plan))
	}
	set := l.snapshot()
	l.same("after Setup", bridged(t, orig), set)
	l.reachable()

	addrs, err := l.h.Addrs("br0")
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("198.18.0.11/24"), netip.MustParsePrefix("2001:db8::11/64")}
	if err != nil || !slices.Equal(addrs, wantAddrs) {
		t.Errorf("Addrs(br0) = %v, %v; want %v", addrs, err, wantAddrs)
	}
	if _, err := l.h.Addrs("eth0"); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("Addrs(eth0) = %v, want: not a bridge", err)
	}
	layoutAfter, err := l.h.Layout(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantLayout := fmt.Sprintf("%+v", Layout{
		Bridge: "br0", NIC: "eth0", MAC: mustMAC(hostMAC), MTU: 1500, Addrs: wantAddrs,
		Routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("198.18.0.12")},
			{Dst: netip.MustParsePrefix("198.19.5.0/24"), Gw: netip.MustParseAddr("198.18.0.13"), Metric: 50},
			{Dst: netip.MustParsePrefix("2001:db8:5::/64"), Gw: netip.MustParseAddr("2001:db8::12")},
		},
	})
	for when, got := range map[string]Layout{"before": layoutBefore, "after": layoutAfter} {
		if fmt.Sprintf("%+v", got) != wantLayout {
			t.Errorf("Layout %s Setup:\n%+v\nwant\n%s", when, got, wantLayout)
		}
	}

	// Again: nothing to do, nothing done.
	if steps, err := l.h.Plan(cfg); err != nil || len(steps) != 0 {
		t.Errorf("Plan after Setup = %q, %v; want nothing", details(steps), err)
	}
	if steps, err := l.h.Setup(cfg); err != nil || len(steps) != 0 {
		t.Errorf("second Setup = %q, %v; want nothing", details(steps), err)
	}
	l.same("after the second Setup", set, l.snapshot())

	wantDown := []string{
		"move route default via 198.18.0.12 br0 → eth0",
		"move route 198.19.5.0/24 via 198.18.0.13 metric 50 br0 → eth0",
		"move route 2001:db8:5::/64 via 2001:db8::12 br0 → eth0",
	}
	down, err := l.h.PlanTeardown(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := details(down); len(got) != 9 || !slices.Equal(got[2:5], wantDown) || got[8] != "delete bridge br0" {
		t.Errorf("teardown plan:\n\t%s", strings.Join(got, "\n\t"))
	}
	if _, err := l.h.Teardown(cfg); err != nil {
		t.Fatalf("Teardown: %v\n%s", err, l.dump())
	}
	l.same("after Teardown", orig, l.snapshot())
	l.reachable()

	if steps, err := l.h.Teardown(cfg); err != nil || len(steps) != 0 {
		t.Errorf("second Teardown = %q, %v; want nothing", details(steps), err)
	}
	l.same("after the second Teardown", orig, l.snapshot())
}

// TestSetupRollback fails a fresh Setup after each of its steps in turn:
// every time, the host must be back as it was, and reachable.
func TestSetupRollback(t *testing.T) {
	l := newLab(t)
	orig := l.snapshot()
	plan, err := l.h.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range plan {
		l.failAfter(i)
		steps, err := l.h.Setup(cfg)
		l.failAfter(-1)
		if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), s.Detail) || !strings.Contains(err.Error(), "rolled back") {
			t.Fatalf("Setup failing after step %d %q: %q, %v", i, s.Detail, details(steps), err)
		}
		l.same(fmt.Sprintf("after failing at step %d %q", i, s.Detail), orig, l.snapshot())
		l.reachable()
	}
}

// TestTeardownRollback fails Teardown after each of its steps in turn: the
// host must stay bridged, and reachable.
func TestTeardownRollback(t *testing.T) {
	l := newLab(t)
	if _, err := l.h.Setup(cfg); err != nil {
		t.Fatal(err)
	}
	set := l.snapshot()
	plan, err := l.h.PlanTeardown(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range plan {
		l.failAfter(i)
		_, err := l.h.Teardown(cfg)
		l.failAfter(-1)
		if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "rolled back") {
			t.Fatalf("Teardown failing after step %d %q: %v", i, s.Detail, err)
		}
		l.same(fmt.Sprintf("after failing at step %d %q", i, s.Detail), set, l.snapshot())
		l.reachable()
	}
}

// TestConverges interrupts Setup without a rollback (a killed ipamctl)
// after each number of steps: from there, Setup run again finishes the
// job and Teardown then restores the original; so does Teardown alone.
func TestConverges(t *testing.T) {
	l := newLab(t)
	orig := l.snapshot()
	want := bridged(t, orig)
	interrupt := func(k int) []Step {
		t.Helper()
		plan, err := l.h.Plan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range plan[:k] {
			if err := s.do(); err != nil {
				t.Fatalf("step %q: %v", s.Detail, err)
			}
		}
		return plan
	}
	for k := 1; k < 9; k++ {
		interrupt(k)
		if _, err := l.h.Teardown(cfg); err != nil {
			t.Fatalf("Teardown after %d steps: %v", k, err)
		}
		l.same(fmt.Sprintf("Teardown right after %d steps", k), orig, l.snapshot())

		plan := interrupt(k)
		rest, err := l.h.Setup(cfg)
		if err != nil {
			t.Fatalf("Setup after %d steps: %v", k, err)
		}
		if !slices.Equal(details(rest), details(plan[k:])) {
			t.Errorf("Setup after %d steps did\n\t%s\nwant\n\t%s", k,
				strings.Join(details(rest), "\n\t"), strings.Join(details(plan[k:]), "\n\t"))
		}
		l.same(fmt.Sprintf("Setup after %d steps", k), want, l.snapshot())
		if _, err := l.h.Teardown(cfg); err != nil {
			t.Fatal(err)
		}
		l.same(fmt.Sprintf("Teardown after %d steps", k), orig, l.snapshot())
	}
	l.reachable()
}

func TestRefusals(t *testing.T) {
	l := newLab(t)
	orig := l.snapshot()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no NIC given"},
		{Config{NIC: "eth0", Bridge: "eth0"}, "both \"eth0\""},
		{Config{NIC: "eth0", Bridge: "br-with-a-long-name"}, "longer than 15 bytes"},
		{Config{NIC: "eth9"}, "NIC eth9 not found"},
		{Config{NIC: "eth0", Bridge: "lo"}, "lo exists and is a device link, not a bridge"},
	} {
		if _, err := l.h.Setup(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Setup(%+v) = %v, want an error containing %q", c.cfg, err, c.want)
		}
	}
	l.same("after refused setups", orig, l.snapshot())

	if _, err := l.h.Setup(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := l.h.Setup(Config{NIC: "eth0", Bridge: "br1"}); err == nil || !strings.Contains(err.Error(), "eth0 is already a port of br0") {
		t.Errorf("Setup into a second bridge: %v", err)
	}
	l.ip("-n", l.host, "link", "add", "veth-c1", "master", "br0", "type", "veth", "peer", "name", "veth-c2")
	if _, err := l.h.Teardown(cfg); err == nil || !strings.Contains(err.Error(), "br0 has other ports besides eth0: [veth-c1]") {
		t.Errorf("Teardown with a container's port: %v", err)
	}
	l.ip("-n", l.host, "link", "del", "veth-c1")
	if _, err := l.h.Teardown(Config{NIC: "eth9"}); err == nil || !strings.Contains(err.Error(), "NIC eth9 not found: not deleting br0") {
		t.Errorf("Teardown without the NIC: %v", err)
	}
	if _, err := l.h.Teardown(cfg); err != nil {
		t.Fatal(err)
	}
	l.same("after Teardown", orig, l.snapshot())
}
