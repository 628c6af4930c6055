package bridgesetup

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Layout is the bridged configuration to make permanent: what the
// renderers of persist.go write, in each distribution's format.
type Layout struct {
	Bridge string
	NIC    string
	MAC    net.HardwareAddr // the NIC's, which the bridge takes
	MTU    int              // 0 (or 1500) is the default and is not written
	Addrs  []netip.Prefix   // the host's addresses, on the bridge
	Routes []Route          // the routes through the bridge, besides the prefix routes
}

// Route is a route through the bridge, as far as the file formats can
// express it.
type Route struct {
	Dst    netip.Prefix // 0.0.0.0/0 or ::/0 for a default route
	Gw     netip.Addr   // invalid for a route on the link
	Src    netip.Addr   // preferred source; may be invalid
	Metric int          // 0: the kernel's default (IPv6's 1024 too)
	Table  int          // 0: main
}

func (r Route) isDefault() bool { return r.Dst.Bits() == 0 }

// plain reports whether r is a default route that a format's bare
// "gateway" key expresses: main table, default metric, no source.
func (r Route) plain() bool {
	return r.isDefault() && r.Gw.IsValid() && r.Metric == 0 && r.Table == 0 && !r.Src.IsValid()
}

// Layout describes the bridged configuration of cfg from the live state,
// before, during or after Setup: the NIC's MAC and MTU, and the addresses
// and movable routes found on the bridge and on the NIC together.
func (h *Host) Layout(cfg Config) (Layout, error) {
	cfg, err := cfg.check()
	if err != nil {
		return Layout{}, err
	}
	nic, err := h.mustLink(cfg.NIC)
	if err != nil {
		return Layout{}, fmt.Errorf("bridgesetup: %w", err)
	}
	l := Layout{Bridge: cfg.Bridge, NIC: cfg.NIC, MAC: nic.Attrs().HardwareAddr, MTU: nic.Attrs().MTU}
	links := []netlink.Link{nic}
	br, err := h.link(cfg.Bridge)
	if err != nil {
		return Layout{}, fmt.Errorf("bridgesetup: %w", err)
	}
	if br != nil {
		links = []netlink.Link{br, nic}
	}
	for _, link := range links {
		addrs, err := h.globalAddrs(link)
		if err != nil {
			return Layout{}, fmt.Errorf("bridgesetup: %w", err)
		}
		for _, a := range addrs {
			if p := prefixOf(a.IPNet); !slices.Contains(l.Addrs, p) {
				l.Addrs = append(l.Addrs, p)
			}
		}
		routes, err := h.movableRoutes(link)
		if err != nil {
			return Layout{}, fmt.Errorf("bridgesetup: %w", err)
		}
		for _, r := range routes {
			if lr := layoutRoute(r); !slices.Contains(l.Routes, lr) {
				l.Routes = append(l.Routes, lr)
			}
		}
	}
	// IPv4 first, as the formats list them.
	slices.SortStableFunc(l.Addrs, func(a, b netip.Prefix) int { return boolCmp(a.Addr().Is6(), b.Addr().Is6()) })
	slices.SortStableFunc(l.Routes, func(a, b Route) int { return boolCmp(a.Dst.Addr().Is6(), b.Dst.Addr().Is6()) })
	return l, nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func layoutRoute(r netlink.Route) Route {
	lr := Route{Gw: addrOf(r.Gw), Src: addrOf(r.Src), Metric: metric(r), Table: r.Table}
	if lr.Table == unix.RT_TABLE_MAIN {
		lr.Table = 0
	}
	if r.Dst != nil {
		lr.Dst = prefixOf(r.Dst)
	} else if r.Family == unix.AF_INET6 {
		lr.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		lr.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return lr
}
