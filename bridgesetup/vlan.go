package bridgesetup

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VLAN is an 802.1Q link on a NIC, without addresses of its own: the
// parent of macvlan and ipvlan networks on a tagged segment.
type VLAN struct {
	NIC  string // the parent carrying the tagged frames, e.g. eth0 (or br0)
	ID   int    // 1-4094
	Name string // "" means NIC.ID, e.g. eth0.8
}

// check fills in the default name and refuses what the kernel would.
func (v VLAN) check() (VLAN, error) {
	if v.NIC == "" {
		return v, fmt.Errorf("bridgesetup: no NIC given for the VLAN")
	}
	if v.ID < 1 || v.ID > 4094 {
		return v, fmt.Errorf("bridgesetup: invalid VLAN id %d: want 1-4094", v.ID)
	}
	if v.Name == "" {
		v.Name = fmt.Sprintf("%s.%d", v.NIC, v.ID)
	}
	for _, name := range []string{v.NIC, v.Name} {
		if len(name) > 15 {
			return v, fmt.Errorf("bridgesetup: invalid link name %q: longer than 15 bytes", name)
		}
	}
	if v.NIC == v.Name {
		return v, fmt.Errorf("bridgesetup: the NIC and the VLAN link are both %q", v.NIC)
	}
	return v, nil
}

func (v VLAN) detail(verb string) string {
	return fmt.Sprintf("%s VLAN link %s (id %d on %s)", verb, v.Name, v.ID, v.NIC)
}

// Checked returns v with its defaults filled in (the link's name), or why
// the kernel would refuse it.
func (v VLAN) Checked() (VLAN, error) { return v.check() }

// PlanVLAN returns the steps SetupVLAN would take now: set the NIC up if
// it is down, create the VLAN link (up, no address), or set an existing
// one up. It is empty when the link exists as wanted. A link of that name
// that is anything but VLAN v.ID of v.NIC, or another link carrying that
// VLAN on the NIC, is refused: the kernel would not let both exist.
func (h *Host) PlanVLAN(v VLAN) ([]Step, error) {
	v, err := v.check()
	if err != nil {
		return nil, err
	}
	nic, l, err := h.vlanLinks(v)
	if err != nil {
		return nil, err
	}
	if nic == nil {
		return nil, fmt.Errorf("bridgesetup: NIC %s not found", v.NIC)
	}
	if l == nil {
		other, err := h.vlanOn(nic, v.ID)
		if err != nil {
			return nil, fmt.Errorf("bridgesetup: %w", err)
		}
		if other != "" {
			return nil, fmt.Errorf("bridgesetup: %s already carries VLAN %d as %s: use that name (--name %s) or delete it", v.NIC, v.ID, other, other)
		}
	}
	var steps []Step
	if nic.Attrs().Flags&net.FlagUp == 0 {
		steps = append(steps, h.linkUp(v.NIC))
	}
	switch {
	case l == nil:
		create := h.createLink("createVLAN", v.detail("create"), v.Name, h.newVLAN(v))
		do := create.do
		create.do = func() error {
			err := do()
			if errors.Is(err, unix.EOPNOTSUPP) {
				err = fmt.Errorf("%w: this kernel has no 802.1Q support (modprobe 8021q)", err)
			}
			return err
		}
		steps = append(steps, create)
	case l.Attrs().Flags&net.FlagUp == 0:
		steps = append(steps, h.linkUp(v.Name))
	}
	return steps, nil
}

// SetupVLAN takes the steps of PlanVLAN and returns them; on failure it
// rolls back, like Setup.
func (h *Host) SetupVLAN(v VLAN) ([]Step, error) {
	steps, err := h.PlanVLAN(v)
	if err != nil {
		return nil, err
	}
	v, _ = v.check()
	return h.run(v.Name+" and "+v.NIC, steps)
}

// PlanVLANTeardown returns the steps TeardownVLAN would take now: delete
// the VLAN link, and nothing else (the NIC stays up). It is empty when the
// link does not exist. It refuses to delete a link that is not the VLAN
// SetupVLAN makes, one with links on top of it in this namespace (a
// macvlan shim), or one with addresses that setup did not put there.
// Containers' macvlan and ipvlan interfaces live in their own namespaces,
// out of sight: remove the Docker networks first, or the kernel deletes
// those interfaces with the link.
func (h *Host) PlanVLANTeardown(v VLAN) ([]Step, error) {
	v, err := v.check()
	if err != nil {
		return nil, err
	}
	// A VLAN link goes with its NIC: one of this name on a missing NIC is
	// another link, which vlanLinks refuses.
	_, l, err := h.vlanLinks(v)
	if err != nil || l == nil {
		return nil, err
	}
	uppers, err := h.uppers(l)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if len(uppers) > 0 {
		return nil, fmt.Errorf("bridgesetup: %s carries %v: delete them first", v.Name, uppers)
	}
	addrs, err := h.globalAddrs(l)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if len(addrs) > 0 {
		return nil, fmt.Errorf("bridgesetup: %s has addresses, which vlan setup never adds: %v; remove them first", v.Name, addrs)
	}
	return []Step{h.removeLink("deleteVLAN", v.detail("delete"), v.Name, h.newVLAN(v))}, nil
}

// TeardownVLAN deletes the VLAN link: the steps of PlanVLANTeardown. A
// missing link is torn down already.
func (h *Host) TeardownVLAN(v VLAN) ([]Step, error) {
	steps, err := h.PlanVLANTeardown(v)
	if err != nil {
		return nil, err
	}
	v, _ = v.check()
	return h.run(v.Name, steps)
}

// vlanLinks returns the NIC and the VLAN link, either nil when missing. A
// link of the VLAN's name that is not VLAN v.ID of the NIC is an error.
func (h *Host) vlanLinks(v VLAN) (nic, l netlink.Link, err error) {
	if nic, err = h.link(v.NIC); err != nil {
		return nil, nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if l, err = h.link(v.Name); err != nil || l == nil {
		return nic, nil, err
	}
	vl, ok := l.(*netlink.Vlan)
	switch {
	case !ok:
		return nil, nil, fmt.Errorf("bridgesetup: %s exists and is a %s link, not VLAN %d of %s: not touching it", v.Name, l.Type(), v.ID, v.NIC)
	case nic == nil || vl.ParentIndex != nic.Attrs().Index || vl.VlanId != v.ID:
		return nil, nil, fmt.Errorf("bridgesetup: %s exists as VLAN %d of %s, not VLAN %d of %s: not touching it; delete it or choose another --name",
			v.Name, vl.VlanId, h.linkName(vl.ParentIndex), v.ID, v.NIC)
	case vl.VlanProtocol != netlink.VLAN_PROTOCOL_8021Q:
		return nil, nil, fmt.Errorf("bridgesetup: %s exists as a %s VLAN, not 802.1Q: not touching it", v.Name, vl.VlanProtocol)
	}
	return nic, l, nil
}

// newVLAN describes the VLAN link; the NIC's index is looked up when it is
// made, so an undo after the NIC was renumbered still finds it.
func (h *Host) newVLAN(v VLAN) func() (netlink.Link, error) {
	return func() (netlink.Link, error) {
		nic, err := h.mustLink(v.NIC)
		if err != nil {
			return nil, err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.ParentIndex = v.Name, nic.Attrs().Index
		return &netlink.Vlan{LinkAttrs: attrs, VlanId: v.ID, VlanProtocol: netlink.VLAN_PROTOCOL_8021Q}, nil
	}
}

// vlanOn names the link that carries VLAN id on nic, or returns "".
func (h *Host) vlanOn(nic netlink.Link, id int) (string, error) {
	links, err := dump("listing links", h.nl.LinkList)
	if err != nil {
		return "", err
	}
	for _, l := range links {
		if vl, ok := l.(*netlink.Vlan); ok && vl.ParentIndex == nic.Attrs().Index && vl.VlanId == id {
			return vl.Name, nil
		}
	}
	return "", nil
}

// uppers names the links of this namespace stacked on l: macvlans,
// ipvlans, VLANs with l as parent, and ports with l as master.
func (h *Host) uppers(l netlink.Link) ([]string, error) {
	links, err := dump("listing links", h.nl.LinkList)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, u := range links {
		a := u.Attrs()
		if a.Index != l.Attrs().Index && (a.ParentIndex == l.Attrs().Index && a.NetNsID < 0 || a.MasterIndex == l.Attrs().Index) {
			names = append(names, a.Name)
		}
	}
	return names, nil
}
