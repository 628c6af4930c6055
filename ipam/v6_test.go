package ipam_test

import (
	"context"
	"net/netip"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/internal/etcdtest"
)

// TestDualStackOnTwoHosts replays what dockerd sends for `docker network
// create --ipv6 --subnet V4 --subnet V6 --ip-range … --aux-address
// DefaultGatewayIPv6=…` on two hosts, then containers: the IPv6 pool
// behaves as the IPv4 one, with /64 answers.
func TestDualStackOnTwoHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPlugin(t, srv, "host-a", "198.18.0.11", "2001:db8:1::11")
	b := newPlugin(t, srv, "host-b", "198.18.0.12", "2001:db8:1::12")

	v4 := map[string]any{"AddressSpace": "talkingdata", "Pool": "198.18.0.0/24", "SubPool": "198.18.0.128/25"}
	v6 := map[string]any{"AddressSpace": "talkingdata", "Pool": "2001:db8:1::/64", "SubPool": "2001:db8:1::1:0/120", "V6": true}
	for _, p := range []plugin{a, b} {
		p.ok("IpamDriver.RequestPool", v4)
		if id := p.ok("IpamDriver.RequestPool", v6)["PoolID"]; id != "2001:db8:1::/64@2001:db8:1::1:0/120" {
			t.Fatalf("v6 pool id %v", id)
		}
	}
	id := "2001:db8:1::/64@2001:db8:1::1:0/120"
	gw := map[string]string{"RequestAddressType": "com.docker.network.gateway"}
	// No --gateway for v6: the host's own address in the subnet.
	if got := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": gw})["Address"]; got != "2001:db8:1::11/64" {
		t.Fatalf("default v6 gateway of host a: %v", got)
	}
	if got := b.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::12", "Options": gw})["Address"]; got != "2001:db8:1::12/64" {
		t.Fatalf("v6 gateway of host b: %v", got)
	}
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::11", "Options": gw}, `2001:db8:1::11 is the gateway of host "host-a"`)
	for _, p := range []plugin{a, b} { // --aux-address DefaultGatewayIPv6=2001:db8:1::1
		if got := p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::1", "Options": nil})["Address"]; got != "2001:db8:1::1/64" {
			t.Fatalf("v6 router: %v", got)
		}
	}

	// The --ip6 addresses before any random pick, which could take them.
	fixed := map[string]any{"PoolID": id, "Address": "2001:db8:1::1:99", "Options": mac(99)} // --ip6
	if got := a.ok("IpamDriver.RequestAddress", fixed)["Address"]; got != "2001:db8:1::1:99/64" {
		t.Fatalf("--ip6: %v", got)
	}
	b.refused("IpamDriver.RequestAddress", fixed, `2001:db8:1::1:99 is in use: container of host "host-a"`)

	// Recorded in etcd under the fully expanded address.
	key := "/t/used/2001:db8:1::-64/2001:0db8:0001:0000:0000:0000:0001:0099"
	if r, err := srv.Client(t).Get(context.Background(), key, clientv3.WithCountOnly()); err != nil || r.Count != 1 {
		t.Fatalf("etcd key %s: %v %v", key, r, err)
	}

	a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::1:99"})
	b.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::1:98", "Options": mac(98)})

	ipRange := netip.MustParsePrefix("2001:db8:1::1:0/120")
	seen := map[string]bool{}
	for i := range 10 {
		got := []plugin{a, b}[i%2].ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(i)})["Address"].(string)
		pfx := netip.MustParsePrefix(got)
		if seen[got] || pfx.Bits() != 64 || !ipRange.Contains(pfx.Addr()) {
			t.Fatalf("container address %s: duplicate, or not a /64 in the ip-range", got)
		}
		seen[got] = true
	}
	for _, p := range []plugin{a, b} {
		p.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::1"})
		p.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": id})
	}
}

// TestIPv6Refusals: each IPv6 request dockerd may send that cannot work is
// refused with what to do instead.
func TestIPv6Refusals(t *testing.T) {
	srv := etcdtest.Start(t)
	p := newPlugin(t, srv, "h", "2001:db8:1::11")
	id := p.ok("IpamDriver.RequestPool", map[string]any{"Pool": "2001:db8:1::/64", "SubPool": "2001:db8:1::/120", "V6": true})["PoolID"]
	for _, tc := range []struct {
		method string
		body   any
		want   string
	}{
		// --ipv6 without a v6 --subnet: dockerd asks for a default pool.
		{"IpamDriver.RequestPool", map[string]any{"V6": true}, "an IPv6 subnet is required with --ipv6: add --subnet 2001:db8:…/64 --ip-range"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "2001:db8:2::/64", "V6": true}, "give a smaller --ip-range such as 2001:db8:2::/112"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "2001:db8:2::/64", "SubPool": "2001:db8:2::/96", "V6": true}, "4294967295 addresses are too many"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "2001:db8:2::/64", "SubPool": "2001:db8:2::/112"}, "not of the requested address family (IPv4)"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24", "V6": true}, "not of the requested address family (IPv6)"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "2001:db8:2::/64", "SubPool": "198.18.0.0/24", "V6": true}, "not inside subnet"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8:1::", "Options": mac(0)}, "subnet-router anycast address"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.5", "Options": mac(0)}, "outside subnet 2001:db8:1::/64"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "fe80::1%eth0", "Options": mac(0)}, "invalid Address"},
	} {
		p.refused(tc.method, tc.body, tc.want)
	}
}
