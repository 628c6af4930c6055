package main

import (
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestNetworkSpecRendering(t *testing.T) {
	s := networkSpec{Name: "lan", Bridge: "br0", IPAMDriver: "talkingdata", V4: ipamConfig{
		Subnet: netip.MustParsePrefix("198.18.0.0/16"), IPRange: netip.MustParsePrefix("198.18.1.0/24"),
		Gateway: netip.MustParseAddr("198.18.0.11"), Router: netip.MustParseAddr("198.18.0.1")}}
	want := "docker network create -d bridge --ipam-driver talkingdata --subnet 198.18.0.0/16 --ip-range 198.18.1.0/24" +
		" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1 -o com.docker.network.bridge.name=br0" +
		" -o com.docker.network.bridge.enable_ip_masquerade=false lan"
	if got := s.command(); got != want {
		t.Fatalf("command:\n got %s\nwant %s", got, want)
	}
	body, _ := json.Marshal(s.request())
	const wantBody = `{"CheckDuplicate":true,"Driver":"bridge","IPAM":{"Config":[{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","IPRange":"198.18.1.0/24","Subnet":"198.18.0.0/16"}],"Driver":"talkingdata"},"Name":"lan","Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`
	if string(body) != wantBody {
		t.Fatalf("API body:\n got %s\nwant %s", body, wantBody)
	}
}

func TestDualStackNetworkSpecRendering(t *testing.T) {
	s := networkSpec{Name: "lan", Bridge: "br0", IPAMDriver: "talkingdata",
		V4: ipamConfig{Subnet: netip.MustParsePrefix("198.18.0.0/16"), Gateway: netip.MustParseAddr("198.18.0.11"), Router: netip.MustParseAddr("198.18.0.1")},
		V6: ipamConfig{Subnet: netip.MustParsePrefix("2001:db8:1::/64"), IPRange: netip.MustParsePrefix("2001:db8:1::1:0/112"),
			Gateway: netip.MustParseAddr("2001:db8:1::11"), Router: netip.MustParseAddr("2001:db8:1::1")}}
	want := "docker network create -d bridge --ipam-driver talkingdata --ipv6 --subnet 198.18.0.0/16" +
		" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1" +
		" --subnet 2001:db8:1::/64 --ip-range 2001:db8:1::1:0/112 --gateway 2001:db8:1::11 --aux-address DefaultGatewayIPv6=2001:db8:1::1" +
		" -o com.docker.network.bridge.name=br0 -o com.docker.network.bridge.enable_ip_masquerade=false lan"
	if got := s.command(); got != want {
		t.Fatalf("command:\n got %s\nwant %s", got, want)
	}
	body, _ := json.Marshal(s.request())
	const wantBody = `{"CheckDuplicate":true,"Driver":"bridge","EnableIPv6":true,"IPAM":{"Config":[` +
		`{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","Subnet":"198.18.0.0/16"},` +
		`{"AuxiliaryAddresses":{"DefaultGatewayIPv6":"2001:db8:1::1"},"Gateway":"2001:db8:1::11","IPRange":"2001:db8:1::1:0/112","Subnet":"2001:db8:1::/64"}],` +
		`"Driver":"talkingdata"},"Name":"lan","Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`
	if string(body) != wantBody {
		t.Fatalf("API body:\n got %s\nwant %s", body, wantBody)
	}
}

// TestNetworkCreateFlags: flag mistakes are refused before anything is
// looked up (this test has no bridge, no etcd and no dockerd).
func TestNetworkCreateFlags(t *testing.T) {
	base := []string{"ipamctl", "network", "create", "--name", "lan", "--subnet", "198.18.0.0/16", "--router", "198.18.0.1", "--bridge", "nosuchbr", "--print"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--subnet6", "2001:db8:1::/64"}, "--subnet6 and --router6 are both needed"},
		{[]string{"--router6", "2001:db8:1::1"}, "--subnet6 and --router6 are both needed"},
		{[]string{"--subnet6", "198.19.0.0/16", "--router6", "198.19.0.1"}, "--subnet6 198.19.0.0/16 is not an IPv6 subnet"},
		{[]string{"--subnet6", "2001:db8:1::/64", "--ip-range6", "2001:db8:2::/112", "--router6", "2001:db8:1::1"}, `--subnet6: invalid ip-range "2001:db8:2::/112": not inside subnet`},
		{[]string{"--subnet6", "2001:db8:1::/64", "--router6", "2001:db8:2::1"}, "--router6: address 2001:db8:2::1 is outside subnet 2001:db8:1::/64"},
		{[]string{"--subnet6", "2001:db8:1::/64", "--router6", "2001:db8:1::"}, "--router6: address 2001:db8:1:: is the subnet-router anycast address"},
		{[]string{"--subnet6", "2001:db8:1::/64", "--router6", "2001:db8:1::1"}, "bridge nosuchbr not found"},
	} {
		app := newApp()
		app.Writer, app.ErrWriter = io.Discard, io.Discard
		if err := app.Run(append(base, c.args...)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
