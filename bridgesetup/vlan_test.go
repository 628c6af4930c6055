package bridgesetup

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/talkingdata/ipam/internal/vm"
)

var vlan8 = VLAN{NIC: "eth0", ID: 8}

// vlanInVM reports true when this kernel cannot make 802.1Q links (found by
// making one in the lab's host namespace) and the test ran in a VM instead
// (internal/vm): the caller returns.
func (l *lab) vlanInVM() bool {
	l.t.Helper()
	eth0, err := l.nl.LinkByName("eth0")
	if err != nil {
		l.t.Fatal(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex = "probe.4094", eth0.Attrs().Index
	probe := &netlink.Vlan{LinkAttrs: attrs, VlanId: 4094}
	err = l.nl.LinkAdd(probe)
	if err == nil {
		err = l.nl.LinkDel(probe)
	}
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		l.t.Fatalf("making a VLAN link: %v", err)
	}
	return vm.RunUnless(l.t, err == nil, "CONFIG_VLAN_8021Q (modprobe 8021q)")
}

// ping pings addr from netns ns, retrying while the links settle.
func (l *lab) pingFrom(ns, addr string) error {
	var err error
	var out []byte
	for range 20 {
		if out, err = exec.Command("nsenter", "--net=/run/netns/"+ns, "ping", "-c1", "-W1", addr).CombinedOutput(); err == nil {
			return nil
		}
	}
	return fmt.Errorf("ping %s from %s: %v\n%s", addr, ns, err, out)
}

func TestVLANSetupAndTeardown(t *testing.T) {
	l := newLab(t)
	if l.vlanInVM() {
		return
	}
	orig := l.snapshot()

	plan, err := l.h.PlanVLAN(vlan8)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := details(plan), []string{"create VLAN link eth0.8 (id 8 on eth0)"}; !slices.Equal(got, want) {
		t.Fatalf("plan %q, want %q", got, want)
	}
	l.same("after PlanVLAN", orig, l.snapshot())
	if _, err := l.h.SetupVLAN(vlan8); err != nil {
		t.Fatalf("SetupVLAN: %v\n%s", err, l.dump())
	}
	set := l.snapshot()
	want := orig
	want.Links = slices.Sorted(slices.Values(append(slices.Clone(orig.Links), "eth0.8 vlan up=true master= mac="+hostMAC)))
	l.same("after SetupVLAN", want, set) // no address on eth0.8, no route changed
	l.reachable()

	// Tagged frames cross: a macvlan on eth0.8 reaches the peer's VLAN 8.
	l.ip("-n", l.peer, "link", "add", "link", "peer0", "name", "peer0.8", "type", "vlan", "id", "8")
	l.ip("-n", l.peer, "addr", "add", "198.18.8.12/24", "dev", "peer0.8")
	l.ip("-n", l.peer, "link", "set", "peer0.8", "up")
	l.ip("-n", l.host, "link", "add", "link", "eth0.8", "name", "mv0", "type", "macvlan", "mode", "bridge")
	l.ip("-n", l.host, "addr", "add", "198.18.8.11/24", "dev", "mv0")
	l.ip("-n", l.host, "link", "set", "mv0", "up")
	if err := l.pingFrom(l.host, "198.18.8.12"); err != nil {
		t.Fatal(err)
	}

	if steps, err := l.h.SetupVLAN(vlan8); err != nil || len(steps) != 0 {
		t.Errorf("second SetupVLAN = %q, %v; want nothing", details(steps), err)
	}
	if _, err := l.h.TeardownVLAN(vlan8); err == nil || !strings.Contains(err.Error(), "eth0.8 carries [mv0]: delete them first") {
		t.Errorf("TeardownVLAN under a macvlan: %v", err)
	}
	l.ip("-n", l.host, "link", "del", "mv0")
	l.same("before TeardownVLAN", want, l.snapshot())

	// A link that is down is set up again, and nothing else.
	l.ip("-n", l.host, "link", "set", "eth0.8", "down")
	if steps, err := l.h.SetupVLAN(vlan8); err != nil || !slices.Equal(details(steps), []string{"set eth0.8 up"}) {
		t.Errorf("SetupVLAN of a down link = %q, %v", details(steps), err)
	}

	down, err := l.h.PlanVLANTeardown(vlan8)
	if err != nil || !slices.Equal(details(down), []string{"delete VLAN link eth0.8 (id 8 on eth0)"}) {
		t.Fatalf("teardown plan %q, %v", details(down), err)
	}
	if _, err := l.h.TeardownVLAN(vlan8); err != nil {
		t.Fatal(err)
	}
	l.same("after TeardownVLAN", orig, l.snapshot())
	if steps, err := l.h.TeardownVLAN(vlan8); err != nil || len(steps) != 0 {
		t.Errorf("second TeardownVLAN = %q, %v; want nothing", details(steps), err)
	}
	l.reachable()
}

// TestVLANRollback fails SetupVLAN (on a NIC that is down) and
// TeardownVLAN after each of their steps: the host is back as it was.
func TestVLANRollback(t *testing.T) {
	l := newLab(t)
	if l.vlanInVM() {
		return
	}
	l.ip("-n", l.host, "link", "set", "eth0", "down")
	orig := l.snapshot()
	plan, err := l.h.PlanVLAN(vlan8)
	if err != nil || !slices.Equal(details(plan), []string{"set eth0 up", "create VLAN link eth0.8 (id 8 on eth0)"}) {
		t.Fatalf("plan %q, %v", details(plan), err)
	}
	for i, s := range plan {
		l.failAfter(i)
		_, err := l.h.SetupVLAN(vlan8)
		l.failAfter(-1)
		if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "rolled back") {
			t.Fatalf("SetupVLAN failing after %q: %v", s.Detail, err)
		}
		l.same(fmt.Sprintf("after failing at %q", s.Detail), orig, l.snapshot())
	}
	if _, err := l.h.SetupVLAN(vlan8); err != nil {
		t.Fatal(err)
	}
	set := l.snapshot()
	l.failAfter(0)
	_, err = l.h.TeardownVLAN(vlan8)
	l.failAfter(-1)
	if !errors.Is(err, errInjected) {
		t.Fatalf("TeardownVLAN failing: %v", err)
	}
	l.same("after a failed TeardownVLAN", set, l.snapshot())
}

// TestVLANConflicts: links in the way are named, and left alone.
func TestVLANConflicts(t *testing.T) {
	l := newLab(t)
	if l.vlanInVM() {
		return
	}
	l.ip("-n", l.host, "link", "add", "link", "eth0", "name", "v8", "type", "vlan", "id", "8")
	l.ip("-n", l.host, "link", "set", "v8", "up") // as setup leaves it: then there is nothing to do
	l.ip("-n", l.host, "link", "add", "link", "eth0", "name", "eth0.9", "type", "vlan", "id", "10")
	l.ip("-n", l.host, "link", "add", "link", "eth0", "name", "ad.11", "type", "vlan", "protocol", "802.1ad", "id", "11")
	before := l.snapshot()
	for _, c := range []struct {
		v    VLAN
		want string
	}{
		{vlan8, "eth0 already carries VLAN 8 as v8: use that name (--name v8) or delete it"},
		{VLAN{NIC: "eth0", ID: 9}, "eth0.9 exists as VLAN 10 of eth0, not VLAN 9 of eth0: not touching it"},
		{VLAN{NIC: "eth0", ID: 11, Name: "ad.11"}, "ad.11 exists as a 802.1ad VLAN, not 802.1Q"},
	} {
		if _, err := l.h.SetupVLAN(c.v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetupVLAN(%+v) = %v, want %q", c.v, err, c.want)
		}
		if c.v.ID != 8 {
			if _, err := l.h.TeardownVLAN(c.v); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("TeardownVLAN(%+v) = %v, want %q", c.v, err, c.want)
			}
		}
	}
	if steps, err := l.h.SetupVLAN(VLAN{NIC: "eth0", ID: 8, Name: "v8"}); err != nil || len(steps) != 0 {
		t.Errorf("SetupVLAN of the existing v8 = %q, %v; want nothing to do", details(steps), err)
	}
	l.same("after refused VLAN setups", before, l.snapshot())
}

// TestVLANRefusals needs no VLAN support in the kernel: what is refused
// before a VLAN link is made or read.
func TestVLANRefusals(t *testing.T) {
	l := newLab(t)
	l.ip("-n", l.host, "link", "add", "eth0.7", "type", "veth", "peer", "name", "p7")
	orig := l.snapshot()
	for _, c := range []struct {
		v    VLAN
		want string
	}{
		{VLAN{ID: 8}, "no NIC given"},
		{VLAN{NIC: "eth0"}, "invalid VLAN id 0: want 1-4094"},
		{VLAN{NIC: "eth0", ID: 4095}, "invalid VLAN id 4095"},
		{VLAN{NIC: "eth0", ID: 8, Name: "eth0"}, `both "eth0"`},
		{VLAN{NIC: "a-very-long-nic", ID: 4000}, `invalid link name "a-very-long-nic.4000": longer than 15 bytes`},
		{VLAN{NIC: "eth9", ID: 8}, "NIC eth9 not found"},
		{VLAN{NIC: "eth0", ID: 7}, "eth0.7 exists and is a veth link, not VLAN 7 of eth0: not touching it"},
	} {
		if _, err := l.h.SetupVLAN(c.v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetupVLAN(%+v) = %v, want an error containing %q", c.v, err, c.want)
		}
	}
	if _, err := l.h.TeardownVLAN(VLAN{NIC: "eth0", ID: 7}); err == nil || !strings.Contains(err.Error(), "is a veth link") {
		t.Errorf("TeardownVLAN of a veth named eth0.7: %v", err)
	}
	if steps, err := l.h.TeardownVLAN(vlan8); err != nil || len(steps) != 0 {
		t.Errorf("TeardownVLAN without the link = %q, %v; want nothing to do", details(steps), err)
	}
	l.same("after refused VLAN setups", orig, l.snapshot())
}

func TestRenderVLAN(t *testing.T) {
	const hdr = "# Written by ipamctl vlan setup: eth0.8 is VLAN 8 of eth0, without addresses, for macvlan/ipvlan networks.\n"
	for _, c := range []struct {
		kind string
		want map[string]string
	}{
		{Networkd, map[string]string{
			"/etc/systemd/network/10-eth0.8.netdev":                   hdr + "[NetDev]\nName=eth0.8\nKind=vlan\n\n[VLAN]\nId=8\n",
			"/etc/systemd/network/10-eth0.8.network":                  hdr + "[Match]\nName=eth0.8\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n",
			"/etc/systemd/network/10-eth0.network.d/vlan-eth0.8.conf": hdr + "[Network]\nVLAN=eth0.8\n",
		}},
		{Ifupdown, map[string]string{
			"/etc/network/interfaces.d/eth0.8": hdr + "auto eth0.8\niface eth0.8 inet manual\n\tvlan-raw-device eth0\n\tvlan-id 8\n",
		}},
		{Ifcfg, map[string]string{
			"/etc/sysconfig/network-scripts/ifcfg-eth0.8": hdr + "DEVICE=eth0.8\nVLAN=yes\nPHYSDEV=eth0\nVLAN_ID=8\nONBOOT=yes\nBOOTPROTO=none\nIPV6INIT=no\n",
		}},
	} {
		t.Run(c.kind, func(t *testing.T) {
			files, err := RenderVLAN(c.kind, vlan8)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, f := range files {
				got[f.Path] = f.Content
			}
			for path, want := range c.want {
				if got[path] != want {
					t.Errorf("%s:\n%s\nwant\n%s", path, got[path], want)
				}
			}
			if len(got) != len(c.want) {
				t.Errorf("files %v, want %d", slices.Sorted(maps.Keys(got)), len(c.want))
			}
		})
	}
	if _, err := RenderVLAN("netplan", vlan8); err == nil || !strings.Contains(err.Error(), `unknown kind of persistent configuration "netplan"`) {
		t.Errorf("unknown kind: %v", err)
	}
	if _, err := RenderVLAN(Networkd, VLAN{NIC: "eth0"}); err == nil {
		t.Error("RenderVLAN without an id: no error")
	}
}
