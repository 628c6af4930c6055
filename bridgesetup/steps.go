package bridgesetup

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Step is one change of a plan.
//
// Each step converges: doing it when its change is already there does
// nothing, and its undo only reverts what its own do changed, so undoing
// a step that failed half-way, or never ran, is safe.
type Step struct {
	// Name is the kind of step: createBridge, setBridgeMAC, linkUp,
	// copyAddress, enslaveNIC, moveRoute, removeAddress, releaseNIC,
	// deleteBridge; createVLAN, deleteVLAN.
	Name string
	// Detail is one line for people: "copy address 198.18.0.11/24 eth0 → br0".
	Detail string

	do, undo func() error
}

// run does the steps in order. When one fails, it undoes that step and
// every one before it, in reverse, and carries on undoing past an undo
// that fails, so as much as possible of the original state comes back;
// the error then says what could not be restored. what names the links,
// for the message.
func (h *Host) run(what string, steps []Step) ([]Step, error) {
	for i, s := range steps {
		err := s.do()
		if err == nil && h.inject != nil {
			err = h.inject(s)
		}
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s: %w", s.Detail, err)
		var undoErrs []error
		for j := i; j >= 0; j-- {
			if uerr := steps[j].undo(); uerr != nil {
				undoErrs = append(undoErrs, fmt.Errorf("undo %q: %w", steps[j].Detail, uerr))
			}
		}
		if len(undoErrs) > 0 {
			return nil, fmt.Errorf("%w; rolling back failed too, check %s by hand: %w", err, what, errors.Join(undoErrs...))
		}
		return nil, fmt.Errorf("%w (rolled back: %s as before)", err, what)
	}
	return steps, nil
}

// addLink creates the link that newLink describes, up, unless one of its
// name exists.
func (h *Host) addLink(name string, newLink func() (netlink.Link, error)) (created bool, err error) {
	l, err := h.link(name)
	if err != nil {
		return false, err
	}
	if l == nil {
		tmpl, err := newLink()
		if err != nil {
			return false, err
		}
		if err := h.nl.LinkAdd(tmpl); err != nil {
			return false, err
		}
		created = true
		if l, err = h.mustLink(name); err != nil {
			return created, err
		}
	}
	return created, h.nl.LinkSetUp(l)
}

// deleteLink deletes the named link; a missing one is deleted already.
func (h *Host) deleteLink(name string) (deleted bool, err error) {
	l, err := h.link(name)
	if err != nil || l == nil {
		return false, err
	}
	if err := h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, err
	}
	return true, nil
}

// createLink is the step that makes a link (createBridge, createVLAN); its
// undo deletes the link only if the step made it.
func (h *Host) createLink(step, detail, name string, newLink func() (netlink.Link, error)) Step {
	var created bool
	return Step{
		Name:   step,
		Detail: detail,
		do: func() (err error) {
			created, err = h.addLink(name, newLink)
			return err
		},
		undo: func() error {
			if !created {
				return nil
			}
			_, err := h.deleteLink(name)
			return err
		},
	}
}

// removeLink is createLink backwards: its undo makes the link again as
// newLink describes it, if the step deleted it.
func (h *Host) removeLink(step, detail, name string, newLink func() (netlink.Link, error)) Step {
	var deleted bool
	return Step{
		Name:   step,
		Detail: detail,
		do: func() (err error) {
			deleted, err = h.deleteLink(name)
			return err
		},
		undo: func() error {
			if !deleted {
				return nil
			}
			_, err := h.addLink(name, newLink)
			return err
		},
	}
}

// newBridge describes the bridge. Giving the MAC at creation marks it as
// set by the user (addr_assign_type 3), so the kernel keeps it instead of
// taking the lowest MAC of the ports as they come and go.
func newBridge(name string, mac net.HardwareAddr, mtu int) func() (netlink.Link, error) {
	return func() (netlink.Link, error) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.HardwareAddr, attrs.MTU = name, mac, mtu
		return &netlink.Bridge{LinkAttrs: attrs}, nil
	}
}

func bridgeDetail(verb, name string, mac net.HardwareAddr, mtu int) string {
	if len(mac) == 0 {
		return fmt.Sprintf("%s bridge %s (mtu %d)", verb, name, mtu)
	}
	return fmt.Sprintf("%s bridge %s (mac %s, mtu %d)", verb, name, mac, mtu)
}

func (h *Host) createBridge(name string, mac net.HardwareAddr, mtu int) Step {
	return h.createLink("createBridge", bridgeDetail("create", name, mac, mtu), name, newBridge(name, mac, mtu))
}

// deleteBridge is createBridge backwards: undoing it makes the bridge
// again, with the MAC and MTU it had; the steps before it in the plan
// then give it back its port and addresses.
func (h *Host) deleteBridge(name string, mac net.HardwareAddr, mtu int) Step {
	return h.removeLink("deleteBridge", "delete bridge "+name, name, newBridge(name, mac, mtu))
}

func (h *Host) setMAC(name string, mac, old net.HardwareAddr) Step {
	set := func(to net.HardwareAddr) error {
		l, err := h.mustLink(name)
		if err != nil {
			return err
		}
		return h.nl.LinkSetHardwareAddr(l, to)
	}
	return Step{
		Name:   "setBridgeMAC",
		Detail: fmt.Sprintf("set %s mac %s (was %s)", name, mac, old),
		do:     func() error { return set(mac) },
		undo:   func() error { return set(old) },
	}
}

func (h *Host) linkUp(name string) Step {
	return Step{
		Name:   "linkUp",
		Detail: fmt.Sprintf("set %s up", name),
		do: func() error {
			l, err := h.mustLink(name)
			if err != nil {
				return err
			}
			return h.nl.LinkSetUp(l)
		},
		undo: func() error {
			l, err := h.link(name)
			if err != nil || l == nil {
				return err
			}
			return h.nl.LinkSetDown(l)
		},
	}
}

// setMaster enslaves port to master, or releases it when master is "".
func (h *Host) setMaster(port, master string) error {
	p, err := h.link(port)
	if err != nil {
		return err
	}
	if master == "" {
		if p == nil || p.Attrs().MasterIndex == 0 {
			return nil
		}
		return h.nl.LinkSetNoMaster(p)
	}
	if p == nil {
		return fmt.Errorf("%s not found", port)
	}
	m, err := h.mustLink(master)
	if err != nil {
		return err
	}
	return h.nl.LinkSetMaster(p, m)
}

func (h *Host) enslave(nic, br string) Step {
	return Step{
		Name:   "enslaveNIC",
		Detail: fmt.Sprintf("enslave %s to %s", nic, br),
		do:     func() error { return h.setMaster(nic, br) },
		undo:   func() error { return h.setMaster(nic, "") },
	}
}

func (h *Host) release(nic, br string) Step {
	return Step{
		Name:   "releaseNIC",
		Detail: fmt.Sprintf("release %s from %s", nic, br),
		do:     func() error { return h.setMaster(nic, "") },
		undo:   func() error { return h.setMaster(nic, br) },
	}
}

// addrOn is a as it should be added to (or deleted from) link to, which
// it was listed on link from.
//
// An IPv4 label names the link ("eth0", or "eth0:web" for an alias) and
// follows the address. Of the flags, only those one may set survive, and
// IPv6 addresses get IFA_F_NODAD: the address was already in use on this
// segment, and duplicate address detection would leave it tentative,
// unusable as a source, for a second or more after the move. Lifetimes
// are kept: a permanent address stays permanent and one leased by DHCP
// keeps what remains of its lease.
func addrOn(a netlink.Addr, from, to string) *netlink.Addr {
	c := a
	c.LinkIndex = 0
	switch {
	case c.Label == from:
		c.Label = to
	case strings.HasPrefix(c.Label, from+":"):
		c.Label = to + strings.TrimPrefix(c.Label, from)
	default:
		c.Label = ""
	}
	c.Flags &= unix.IFA_F_NOPREFIXROUTE | unix.IFA_F_MANAGETEMPADDR | unix.IFA_F_HOMEADDRESS | unix.IFA_F_MCAUTOJOIN
	if c.IP.To4() == nil {
		c.Flags |= unix.IFA_F_NODAD
	}
	return &c
}

// addAddr adds a to link, which a was listed on from; already there is fine.
func (h *Host) addAddr(a netlink.Addr, from, link string) (added bool, err error) {
	l, err := h.mustLink(link)
	if err != nil {
		return false, err
	}
	err = h.nl.AddrAdd(l, addrOn(a, from, link))
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	return err == nil, err
}

// delAddr deletes a from link; already gone is fine.
func (h *Host) delAddr(a netlink.Addr, from, link string) (deleted bool, err error) {
	l, err := h.link(link)
	if err != nil || l == nil {
		return false, err
	}
	err = h.nl.AddrDel(l, addrOn(a, from, link))
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return false, nil
	}
	return err == nil, err
}

// lifetimeNote warns about an address that will expire where it goes.
func lifetimeNote(a netlink.Addr) string {
	if a.ValidLft <= 0 || uint32(a.ValidLft) == 0xFFFFFFFF {
		return ""
	}
	return fmt.Sprintf(" (dynamic, valid %ds more: its DHCP client must move too)", a.ValidLft)
}

func (h *Host) copyAddress(a netlink.Addr, from, to string) Step {
	var added bool
	return Step{
		Name:   "copyAddress",
		Detail: fmt.Sprintf("copy address %s %s → %s%s", prefixOf(a.IPNet), from, to, lifetimeNote(a)),
		do: func() (err error) {
			added, err = h.addAddr(a, from, to)
			return err
		},
		undo: func() error {
			if !added {
				return nil
			}
			_, err := h.delAddr(a, from, to)
			return err
		},
	}
}

func (h *Host) removeAddress(a netlink.Addr, from string) Step {
	var deleted bool
	return Step{
		Name:   "removeAddress",
		Detail: fmt.Sprintf("remove address %s from %s", prefixOf(a.IPNet), from),
		do: func() (err error) {
			deleted, err = h.delAddr(a, from, from)
			return err
		},
		undo: func() error {
			if !deleted {
				return nil
			}
			_, err := h.addAddr(a, from, from)
			return err
		},
	}
}

// routeOn is r as a route through the link with the given index. Of the
// flags the kernel reports, only those one may set survive (not
// linkdown, dead, offload…). A default route gets an explicit 0/0
// destination: netlink refuses a route with neither destination, source
// nor gateway, which a default route through a link alone would be.
func routeOn(r netlink.Route, index int) *netlink.Route {
	c := r
	c.LinkIndex, c.ILinkIndex = index, 0
	c.Flags &= unix.RTNH_F_ONLINK | unix.RTNH_F_PERVASIVE
	if c.Dst == nil {
		bits := 32
		if c.Family == unix.AF_INET6 {
			bits = 128
		}
		c.Dst = &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	}
	return &c
}

// shiftRoute puts r on link to and takes it off link from. The replace
// comes first: for IPv4 it takes the place of the route through from
// (same table, destination, TOS and metric) in one atomic change, so a
// default route never goes missing; the delete then finds nothing, or,
// for IPv6, removes the old nexthop.
func (h *Host) shiftRoute(r netlink.Route, from, to string) error {
	t, err := h.mustLink(to)
	if err != nil {
		return err
	}
	if err := h.nl.RouteReplace(routeOn(r, t.Attrs().Index)); err != nil {
		return err
	}
	f, err := h.link(from)
	if err != nil || f == nil {
		return err
	}
	if err := h.nl.RouteDel(routeOn(r, f.Attrs().Index)); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

func (h *Host) moveRoute(r netlink.Route, from, to string) Step {
	return Step{
		Name:   "moveRoute",
		Detail: fmt.Sprintf("move route %s %s → %s", routeString(r), from, to),
		do:     func() error { return h.shiftRoute(r, from, to) },
		undo:   func() error { return h.shiftRoute(r, to, from) },
	}
}

// routeString renders r the way `ip route` does, without its device.
func routeString(r netlink.Route) string {
	var b strings.Builder
	if r.Dst == nil || r.Dst.IP.IsUnspecified() && prefixOf(r.Dst).Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(prefixOf(r.Dst).String())
	}
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", addrOf(r.Gw))
	}
	if r.Src != nil {
		fmt.Fprintf(&b, " src %s", addrOf(r.Src))
	}
	if m := metric(r); m != 0 {
		fmt.Fprintf(&b, " metric %d", m)
	}
	if r.Table != unix.RT_TABLE_MAIN && r.Table != unix.RT_TABLE_UNSPEC {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	if r.Scope == netlink.SCOPE_HOST {
		b.WriteString(" scope host")
	}
	if r.Flags&unix.RTNH_F_ONLINK != 0 {
		b.WriteString(" onlink")
	}
	return b.String()
}

// metric is r's priority, with IPv6's default of 1024 shown as 0, as it
// is when unset.
func metric(r netlink.Route) int {
	if r.Family == unix.AF_INET6 && r.Priority == 1024 {
		return 0
	}
	return r.Priority
}
