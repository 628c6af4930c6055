package pool

import (
	"encoding/binary"
	"fmt"
	"iter"
	"math"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"

	"go4.org/netipx"
)

// ParseSubnet parses a pool's subnet. It must be the network address itself
// ("10.1.0.0/16", not "10.1.2.3/16"): the subnet names the pool on every
// host, so a sloppy spelling would silently name a different pool.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: want CIDR such as 198.18.0.0/16", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: zones are not allowed", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: use the plain IPv4 form", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: host bits set, did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// ParseRange parses "A-B", a CIDR, or a single address. A CIDR means every
// address in it; callers intersect with HostRange where that matters.
func ParseRange(s string) (netipx.IPRange, error) {
	s = strings.TrimSpace(s)
	var r netipx.IPRange
	switch {
	case strings.Contains(s, "-"):
		first, last, _ := strings.Cut(s, "-")
		a, errA := parseAddr(first)
		b, errB := parseAddr(last)
		if errA != nil || errB != nil {
			return r, fmt.Errorf("invalid range %q: want A-B, CIDR or a single address", s)
		}
		if a.Is4() != b.Is4() {
			return r, fmt.Errorf("invalid range %q: start and end are of different address families", s)
		}
		if b.Less(a) {
			return r, fmt.Errorf("invalid range %q: start after end", s)
		}
		r = netipx.IPRangeFrom(a, b)
	case strings.Contains(s, "/"):
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return r, fmt.Errorf("invalid range %q: want A-B, CIDR or a single address", s)
		}
		if p != p.Masked() {
			return r, fmt.Errorf("invalid range %q: host bits set, did you mean %s?", s, p.Masked())
		}
		r = netipx.RangeOfPrefix(p)
	default:
		a, err := parseAddr(s)
		if err != nil {
			return r, fmt.Errorf("invalid range %q: want A-B, CIDR or a single address", s)
		}
		r = netipx.IPRangeFrom(a, a)
	}
	return r, nil
}

// ParseAddr parses one address without a zone. An IPv4-mapped IPv6
// address stays IPv6: it belongs to IPv6 pools only.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := parseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid address %q", s)
	}
	return a, nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return a, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("zones are not allowed")
	}
	return a, nil
}

// HostRange is the part of a subnet that may be handed to hosts and
// containers. IPv4 loses the network and broadcast addresses (except /31 and
// /32, RFC 3021); IPv6 loses the subnet-router anycast address (RFC 4291).
func HostRange(subnet netip.Prefix) netipx.IPRange {
	r := netipx.RangeOfPrefix(subnet)
	first, last := r.From(), r.To()
	switch {
	case subnet.Addr().Is4() && subnet.Bits() <= 30:
		first, last = first.Next(), last.Prev()
	case subnet.Addr().Is6() && subnet.Bits() <= 126:
		first = first.Next()
	}
	return netipx.IPRangeFrom(first, last)
}

// CheckHostAddr explains why a is not an address a host or container may
// hold in subnet, or returns nil.
func CheckHostAddr(subnet netip.Prefix, a netip.Addr) error {
	if !subnet.Contains(a) {
		return fmt.Errorf("address %s is outside subnet %s", a, subnet)
	}
	if !HostRange(subnet).Contains(a) {
		switch {
		case a.Is6():
			return fmt.Errorf("address %s is the subnet-router anycast address of %s", a, subnet)
		case a == subnet.Addr():
			return fmt.Errorf("address %s is the network address of %s", a, subnet)
		}
		return fmt.Errorf("address %s is the broadcast address of %s", a, subnet)
	}
	return nil
}

// firstBlock is the first prefix of subnet holding at most n addresses
// (n > 0): what to suggest as --ip-range or --range when a range is too
// large, above all an IPv6 /64.
func firstBlock(subnet netip.Prefix, n uint64) netip.Prefix {
	hostBits := bits.Len64(n) - 1 // log2(n), rounded down
	return netip.PrefixFrom(subnet.Addr(), max(subnet.Addr().BitLen()-hostBits, subnet.Bits()))
}

// FormatCount renders an address count for messages: exact up to 2^32,
// then as a power of two below it, since an IPv6 count in digits says
// nothing (and RangeSize saturates).
func FormatCount(n uint64) string {
	if n <= 1<<32 {
		return strconv.FormatUint(n, 10)
	}
	return fmt.Sprintf("more than 2^%d", bits.Len64(n-1)-1)
}

// RangeSize counts the addresses in r, saturating at math.MaxUint64 (an
// IPv6 /64 alone has 2^64).
func RangeSize(r netipx.IPRange) uint64 {
	if !r.IsValid() {
		return 0
	}
	fh, fl := split128(r.From())
	th, tl := split128(r.To())
	lo, borrow := bits.Sub64(tl, fl, 0)
	hi, _ := bits.Sub64(th, fh, borrow)
	if hi != 0 || lo == math.MaxUint64 {
		return math.MaxUint64
	}
	return lo + 1
}

// SetSize counts the addresses in s, saturating like RangeSize.
func SetSize(s *netipx.IPSet) uint64 {
	var n uint64
	for _, r := range s.Ranges() {
		sz := RangeSize(r)
		if n+sz < n {
			return math.MaxUint64
		}
		n += sz
	}
	return n
}

// AddrAt returns the address n places after r's first one; n must be below
// RangeSize(r).
func AddrAt(r netipx.IPRange, n uint64) netip.Addr {
	hi, lo := split128(r.From())
	lo, carry := bits.Add64(lo, n, 0)
	hi += carry
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if r.From().Is4() {
		return a.Unmap()
	}
	return a
}

func split128(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// AddrInSet returns the n-th address of s in address order; n must be
// below SetSize(s).
func AddrInSet(s *netipx.IPSet, n uint64) netip.Addr {
	for _, r := range s.Ranges() {
		if size := RangeSize(r); n >= size {
			n -= size
			continue
		}
		return AddrAt(r, n)
	}
	return netip.Addr{}
}

// FormatRanges renders a set as "A-B,C,D-E" (single addresses without a dash).
func FormatRanges(s *netipx.IPSet) string {
	parts := make([]string, 0, len(s.Ranges()))
	for _, r := range s.Ranges() {
		parts = append(parts, FormatRange(r))
	}
	return strings.Join(parts, ",")
}

// FormatRange renders r as "A-B", or "A" when it holds one address.
func FormatRange(r netipx.IPRange) string {
	if r.From() == r.To() {
		return r.From().String()
	}
	return r.String()
}

// ParseRanges parses the comma-separated form FormatRanges writes.
func ParseRanges(s string) (*netipx.IPSet, error) {
	var b netipx.IPSetBuilder
	if strings.TrimSpace(s) != "" {
		for _, part := range strings.Split(s, ",") {
			r, err := ParseRange(part)
			if err != nil {
				return nil, err
			}
			b.AddRange(r)
		}
	}
	return b.IPSet()
}

// Chunks yields set's ranges cut into runs of at most n consecutive
// addresses, in order: work over a million addresses goes in bounded
// pieces without materialising them.
func Chunks(set *netipx.IPSet, n uint64) iter.Seq[netipx.IPRange] {
	return func(yield func(netipx.IPRange) bool) {
		for _, r := range set.Ranges() {
			for from := r.From(); ; {
				rest := netipx.IPRangeFrom(from, r.To())
				to := AddrAt(rest, min(RangeSize(rest), n)-1)
				if !yield(netipx.IPRangeFrom(from, to)) {
					return
				}
				if to == r.To() {
					break
				}
				from = to.Next()
			}
		}
	}
}
