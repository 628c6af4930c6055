package etcdstore

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/talkingdata/ipam/pool"
)

// Key layout under the prefix (see docs/ARCHITECTURE.md):
//
//	meta/<subnet>          pool description (JSON)
//	free/<subnet>/<addr>   one key per free address, empty value
//	delays/<subnet>/<addr> present while a released address is in its reuse
//	                       delay: bound to a lease, so etcd deletes it when
//	                       the delay is over (delay.go)
//	used/<subnet>/<addr>   one key per used address, its allocation (JSON)
//	refs/<subnet>/<host>   how many of the host's networks use the pool
//	owners/<subnet>/<host>/<mac>  the address an endpoint holds: written and
//	                       deleted in the same transactions as its used/ key,
//	                       so a retried request finds what it already got
//	sticky/<subnet>/<name> the address a sticky name is bound to: written and
//	                       deleted with the used/ record that carries the name
//	hosts/<host>           the host's daemon runs now: on its lease (hosts.go)
//	lastseen/<host>        when the host's daemon last wrote, no lease
//
// <subnet> is "198.18.0.0-16". <addr> sorts in address order, so a key
// range is an address range: IPv4 is zero-padded ("198.018.001.023"),
// IPv6 fully expanded.
type keys struct{ prefix string }

func (k keys) meta(s netip.Prefix) string      { return k.prefix + "meta/" + subnetKey(s) }
func (k keys) metaDir() string                 { return k.prefix + "meta/" }
func (k keys) freeDir(s netip.Prefix) string   { return k.prefix + "free/" + subnetKey(s) + "/" }
func (k keys) usedRoot() string                { return k.prefix + "used/" }
func (k keys) usedDir(s netip.Prefix) string   { return k.usedRoot() + subnetKey(s) + "/" }
func (k keys) refsRoot() string                { return k.prefix + "refs/" }
func (k keys) refsDir(s netip.Prefix) string   { return k.refsRoot() + subnetKey(s) + "/" }
func (k keys) ownersDir(s netip.Prefix) string { return k.prefix + "owners/" + subnetKey(s) + "/" }
func (k keys) delaysDir(s netip.Prefix) string { return k.prefix + "delays/" + subnetKey(s) + "/" }
func (k keys) stickyDir(s netip.Prefix) string { return k.prefix + "sticky/" + subnetKey(s) + "/" }

// binding is the sticky-name key of a, or "" when a carries no name.
func (k keys) binding(s netip.Prefix, a *pool.Allocation) string {
	if a == nil || a.Sticky == "" {
		return ""
	}
	return k.stickyDir(s) + a.Sticky
}

// owner is the owner-index key of a, or "" when a has none
// (pool.Allocation.Owner).
func (k keys) owner(s netip.Prefix, a *pool.Allocation) string {
	if owner := a.Owner(); owner != "" {
		return k.ownersDir(s) + owner
	}
	return ""
}

func (k keys) free(s netip.Prefix, a netip.Addr) string  { return k.freeDir(s) + addrKey(a) }
func (k keys) used(s netip.Prefix, a netip.Addr) string  { return k.usedDir(s) + addrKey(a) }
func (k keys) delay(s netip.Prefix, a netip.Addr) string { return k.delaysDir(s) + addrKey(a) }
func (k keys) ref(s netip.Prefix, host string) string    { return k.refsDir(s) + host }

func subnetKey(s netip.Prefix) string {
	return s.Addr().String() + "-" + strconv.Itoa(s.Bits())
}

// parseSubnetKey reverses subnetKey.
func parseSubnetKey(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("malformed subnet key %q", s)
	}
	return netip.ParsePrefix(s[:i] + "/" + s[i+1:])
}

func addrKey(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return fmt.Sprintf("%03d.%03d.%03d.%03d", b[0], b[1], b[2], b[3])
	}
	return a.StringExpanded()
}

// parseAddrKey reverses addrKey on the last path element of key.
func parseAddrKey(key string) (netip.Addr, error) {
	s := key[strings.LastIndexByte(key, '/')+1:]
	if strings.Contains(s, ":") {
		return netip.ParseAddr(s)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, fmt.Errorf("malformed address key %q", key)
	}
	var b [4]byte
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("malformed address key %q", key)
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), nil
}
