// Package bridgesetup puts a host's NIC into a Linux bridge (br0) so that
// containers on the bridge sit on the NIC's L2 segment, and takes it out
// again. It is the only package in the project that talks netlink.
//
// Setup and teardown are plans: ordered lists of named, idempotent steps
// computed from the live state of the links, each with an undo. When a step
// fails, the steps done so far are undone in reverse, so an operator working
// over the very NIC being bridged keeps its original configuration, and the
// box. A plan computed on a host that is already set up is empty.
package bridgesetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultBridge is the bridge's name when Config leaves it empty.
const DefaultBridge = "br0"

// Host is the network configuration of one network namespace, reached
// through its own netlink socket: a Host made with NewAt works on another
// namespace without switching the calling thread.
type Host struct {
	nl *netlink.Handle
	// inject, when set (by tests), runs after each step's do; an error
	// from it fails the step after the step did its work, which proves
	// that the step's own undo and those before it restore the host.
	inject func(Step) error
}

// New opens the network namespace of the calling thread.
func New() (*Host, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: opening netlink: %w", err)
	}
	return &Host{nl: h}, nil
}

// NewAt opens the network namespace ns; ns may be closed afterwards.
func NewAt(ns netns.NsHandle) (*Host, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: opening netlink in netns %s: %w", ns, err)
	}
	return &Host{nl: h}, nil
}

// Close releases the netlink socket.
func (h *Host) Close() { h.nl.Close() }

// dumpTries bounds the retries of a dump that the kernel reports as
// interrupted (the table changed while it was being read: the answer may
// be incomplete). A busy host settles well within a few tries.
const dumpTries = 10

// dump runs a netlink list call until it is not interrupted.
func dump[T any](what string, list func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpTries {
		v, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return v, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

// link returns the named link, or nil when there is none.
func (h *Host) link(name string) (netlink.Link, error) {
	l, err := dump("looking up "+name, func() (netlink.Link, error) { return h.nl.LinkByName(name) })
	if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
		return nil, nil
	}
	return l, err
}

// mustLink returns the named link, or an error naming it when there is none.
func (h *Host) mustLink(name string) (netlink.Link, error) {
	l, err := h.link(name)
	if err == nil && l == nil {
		err = fmt.Errorf("%s not found", name)
	}
	return l, err
}

// linkName names the link with the given index, for messages.
func (h *Host) linkName(index int) string {
	l, err := dump("", func() (netlink.Link, error) { return h.nl.LinkByIndex(index) })
	if err != nil {
		return fmt.Sprintf("link #%d", index)
	}
	return l.Attrs().Name
}

// ports returns the names of the links enslaved to br.
func (h *Host) ports(br netlink.Link) ([]string, error) {
	links, err := dump("listing links", h.nl.LinkList)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// globalAddrs returns l's addresses of global scope that are not
// link-local, in the kernel's order (an IPv4 primary before its
// secondaries). Link-local addresses stay: each link derives its own.
func (h *Host) globalAddrs(l netlink.Link) ([]netlink.Addr, error) {
	all, err := dump("listing addresses of "+l.Attrs().Name, func() ([]netlink.Addr, error) {
		return h.nl.AddrList(l, netlink.FAMILY_ALL)
	})
	if err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, a := range all {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && !a.IP.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out, nil
}

// movableRoutes returns the routes through l, in every table, that setup
// and teardown carry from one link to the other: unicast routes that
// someone configured. Left alone: the kernel's own (prefix routes of
// addresses, the local table: the kernel makes them for the other link
// when the addresses move), routes learnt from router advertisements and
// redirects (they expire, and the other link learns its own), and
// multipath routes (not listed per link: the operator moves those).
//
// Routes without a gateway come first: a gateway may be reachable only
// through such a route, so it has to be in place first.
func (h *Host) movableRoutes(l netlink.Link) ([]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_UNSPEC}
	all, err := dump("listing routes of "+l.Attrs().Name, func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	var onlink, via []netlink.Route
	for _, r := range all {
		switch {
		case r.LinkIndex != l.Attrs().Index, len(r.MultiPath) > 0,
			r.Table == unix.RT_TABLE_LOCAL, r.Type != unix.RTN_UNICAST,
			r.Protocol == unix.RTPROT_KERNEL, r.Protocol == unix.RTPROT_RA, r.Protocol == unix.RTPROT_REDIRECT:
			continue
		case r.Gw == nil:
			onlink = append(onlink, r)
		default:
			via = append(via, r)
		}
	}
	return append(onlink, via...), nil
}

// HasLink reports whether the calling thread's network namespace has a
// link of that name.
func HasLink(name string) (bool, error) {
	h, err := New()
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.link(name)
	if err != nil {
		return false, fmt.Errorf("bridgesetup: %w", err)
	}
	return l != nil, nil
}

// Addrs returns the global (not link-local) addresses of the bridge in the
// calling thread's network namespace; see Host.Addrs.
func Addrs(bridge string) ([]netip.Prefix, error) {
	h, err := New()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.Addrs(bridge)
}

// Addrs returns the bridge's global (not link-local) addresses, IPv4
// before IPv6, primary before secondary. A missing bridge is an error
// that says how to create it and matches ErrNoBridge.
func (h *Host) Addrs(bridge string) ([]netip.Prefix, error) {
	l, err := h.link(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if l == nil {
		return nil, noBridgeError{bridge}
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("%s is a %s link, not a bridge", bridge, l.Type())
	}
	addrs, err := h.globalAddrs(l)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, prefixOf(a.IPNet))
	}
	return out, nil
}

// ErrNoBridge is what Addrs returns, wrapped, for a missing bridge.
var ErrNoBridge = errors.New("bridgesetup: no such bridge")

// noBridgeError says how to create the missing bridge; it matches ErrNoBridge.
type noBridgeError struct{ bridge string }

func (e noBridgeError) Error() string {
	return fmt.Sprintf("bridge %s not found: run `ipamctl bridge setup --nic …` first", e.bridge)
}

func (e noBridgeError) Unwrap() error { return ErrNoBridge }

// prefixOf converts an address with its prefix length; IPv4 comes out as
// IPv4 whether net.IP held 4 or 16 bytes.
func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// addrOf converts an IP; nil gives the invalid Addr.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
