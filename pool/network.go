package pool

import (
	"fmt"
	"net/netip"

	"go4.org/netipx"
)

// Network is one Docker network's view of a pool: the pool's subnet, and
// the ip-range (--ip-range) it hands addresses out of.
type Network struct {
	Subnet netip.Prefix
	// IPRange is the zero Prefix when the network uses the whole subnet.
	IPRange netip.Prefix
}

// NewNetwork validates a subnet and an optional ip-range inside it.
func NewNetwork(subnet, ipRange string) (Network, error) {
	s, err := ParseSubnet(subnet)
	if err != nil {
		return Network{}, err
	}
	// dockerd 29 reads --subnet 0.0.0.0/24 as "any /24 of my default
	// pools" and passes it on unchanged; talkingdata has no default pools.
	if s.Addr().IsUnspecified() {
		return Network{}, fmt.Errorf("invalid subnet %q: talkingdata picks no subnet for you; give the LAN's own subnet, such as 198.18.0.0/24", subnet)
	}
	n := Network{Subnet: s}
	if ipRange == "" {
		return n, nil
	}
	r, err := netip.ParsePrefix(ipRange)
	if err != nil || r.Addr().Zone() != "" || r.Addr().Is4In6() {
		return Network{}, fmt.Errorf("invalid ip-range %q: want CIDR such as 198.18.1.0/24", ipRange)
	}
	r = r.Masked()
	if r.Addr().Is4() != s.Addr().Is4() || r.Bits() < s.Bits() || !s.Contains(r.Addr()) {
		return Network{}, fmt.Errorf("invalid ip-range %q: not inside subnet %s", ipRange, s)
	}
	if r != s {
		n.IPRange = r
	}
	if !n.Range().IsValid() {
		return Network{}, fmt.Errorf("invalid ip-range %q: holds no usable address of subnet %s", ipRange, s)
	}
	return n, nil
}

// Range is the span automatic allocation draws from: the ip-range, without
// the subnet's network and broadcast addresses.
func (n Network) Range() netipx.IPRange {
	h := HostRange(n.Subnet)
	if !n.IPRange.IsValid() {
		return h
	}
	r := netipx.RangeOfPrefix(n.IPRange)
	first, last := r.From(), r.To()
	if first.Less(h.From()) {
		first = h.From()
	}
	if h.To().Less(last) {
		last = h.To()
	}
	return netipx.IPRangeFrom(first, last)
}

func (n Network) String() string {
	if n.IPRange.IsValid() {
		return fmt.Sprintf("%s (ip-range %s)", n.Subnet, n.IPRange)
	}
	return n.Subnet.String()
}
