package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestNetworkSpecRendering(t *testing.T) {
	lan := networkSpec{Name: "lan", Driver: "bridge", Bridge: "br0", IPAMDriver: "talkingdata", V4: ipamConfig{
		Subnet: netip.MustParsePrefix("198.18.0.0/16"), IPRange: netip.MustParsePrefix("198.18.1.0/24"),
		Gateway: netip.MustParseAddr("198.18.0.11"), Router: netip.MustParseAddr("198.18.0.1")}}
	dual := lan
	dual.V4.IPRange = netip.Prefix{}
	dual.V6 = ipamConfig{Subnet: netip.MustParsePrefix("2001:db8:1::/64"), IPRange: netip.MustParsePrefix("2001:db8:1::1:0/112"),
		Gateway: netip.MustParseAddr("2001:db8:1::11"), Router: netip.MustParseAddr("2001:db8:1::1")}
	vlan := networkSpec{Name: "v8", Driver: "macvlan", Parent: "eth0.8", IPAMDriver: "talkingdata", V4: ipamConfig{
		Subnet: netip.MustParsePrefix("198.18.8.0/24"), IPRange: netip.MustParsePrefix("198.18.8.128/26"),
		Gateway: netip.MustParseAddr("198.18.8.1"), Router: netip.MustParseAddr("198.18.8.1")}}
	lanConfig := lan
	lanConfig.Name, lanConfig.ConfigOnly = "lan-config", true
	sticky := vlan
	sticky.Sticky = true
	ipvlan := vlan
	ipvlan.Driver, ipvlan.IPvlanMode, ipvlan.V4.IPRange = "ipvlan", "l2", netip.Prefix{}
	ipvlan.V6 = ipamConfig{Subnet: netip.MustParsePrefix("2001:db8:8::/64"), IPRange: netip.MustParsePrefix("2001:db8:8::1:0/112"),
		Gateway: netip.MustParseAddr("2001:db8:8::1"), Router: netip.MustParseAddr("2001:db8:8::1")}
	for _, c := range []struct {
		name          string
		spec          networkSpec
		command, body string
	}{
		{"bridge", lan,
			"docker network create -d bridge --ipam-driver talkingdata --subnet 198.18.0.0/16 --ip-range 198.18.1.0/24" +
				" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1 -o com.docker.network.bridge.name=br0" +
				" -o com.docker.network.bridge.enable_ip_masquerade=false lan",
			`{"Driver":"bridge","IPAM":{"Config":[{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","IPRange":"198.18.1.0/24","Subnet":"198.18.0.0/16"}],"Driver":"talkingdata"},"Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`},
		{"swarm configuration of a bridge", lanConfig,
			"docker network create --config-only --ipam-driver talkingdata --subnet 198.18.0.0/16 --ip-range 198.18.1.0/24" +
				" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1 -o com.docker.network.bridge.name=br0" +
				" -o com.docker.network.bridge.enable_ip_masquerade=false lan-config",
			`{"ConfigOnly":true,"IPAM":{"Config":[{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","IPRange":"198.18.1.0/24","Subnet":"198.18.0.0/16"}],"Driver":"talkingdata"},"Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`},
		{"dual-stack bridge", dual,
			"docker network create -d bridge --ipam-driver talkingdata --ipv6 --subnet 198.18.0.0/16" +
				" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1" +
				" --subnet 2001:db8:1::/64 --ip-range 2001:db8:1::1:0/112 --gateway 2001:db8:1::11 --aux-address DefaultGatewayIPv6=2001:db8:1::1" +
				" -o com.docker.network.bridge.name=br0 -o com.docker.network.bridge.enable_ip_masquerade=false lan",
			`{"Driver":"bridge","EnableIPv6":true,"IPAM":{"Config":[` +
				`{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","Subnet":"198.18.0.0/16"},` +
				`{"AuxiliaryAddresses":{"DefaultGatewayIPv6":"2001:db8:1::1"},"Gateway":"2001:db8:1::11","IPRange":"2001:db8:1::1:0/112","Subnet":"2001:db8:1::/64"}],` +
				`"Driver":"talkingdata"},"Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`},
		{"sticky macvlan", sticky,
			"docker network create -d macvlan --ipam-driver talkingdata --ipam-opt talkingdata.gateway=router --ipam-opt talkingdata.sticky=name --subnet 198.18.8.0/24" +
				" --ip-range 198.18.8.128/26 --gateway 198.18.8.1 -o parent=eth0.8 v8",
			`{"Driver":"macvlan","IPAM":{"Config":[{"Gateway":"198.18.8.1","IPRange":"198.18.8.128/26","Subnet":"198.18.8.0/24"}],"Driver":"talkingdata","Options":{"talkingdata.gateway":"router","talkingdata.sticky":"name"}},"Options":{"parent":"eth0.8"}}`},
		{"macvlan", vlan,
			"docker network create -d macvlan --ipam-driver talkingdata --ipam-opt talkingdata.gateway=router --subnet 198.18.8.0/24" +
				" --ip-range 198.18.8.128/26 --gateway 198.18.8.1 -o parent=eth0.8 v8",
			`{"Driver":"macvlan","IPAM":{"Config":[{"Gateway":"198.18.8.1","IPRange":"198.18.8.128/26","Subnet":"198.18.8.0/24"}],"Driver":"talkingdata","Options":{"talkingdata.gateway":"router"}},"Options":{"parent":"eth0.8"}}`},
		{"dual-stack ipvlan", ipvlan,
			"docker network create -d ipvlan --ipam-driver talkingdata --ipam-opt talkingdata.gateway=router --ipv6 --subnet 198.18.8.0/24" +
				" --gateway 198.18.8.1 --subnet 2001:db8:8::/64 --ip-range 2001:db8:8::1:0/112 --gateway 2001:db8:8::1 -o parent=eth0.8 -o ipvlan_mode=l2 v8",
			`{"Driver":"ipvlan","EnableIPv6":true,"IPAM":{"Config":[{"Gateway":"198.18.8.1","Subnet":"198.18.8.0/24"},` +
				`{"Gateway":"2001:db8:8::1","IPRange":"2001:db8:8::1:0/112","Subnet":"2001:db8:8::/64"}],"Driver":"talkingdata","Options":{"talkingdata.gateway":"router"}},"Options":{"ipvlan_mode":"l2","parent":"eth0.8"}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.spec.command(); got != c.command {
				t.Errorf("command:\n got %s\nwant %s", got, c.command)
			}
			if body := setFields(t, c.spec.request()); body != c.body {
				t.Errorf("API request:\n got %s\nwant %s", body, c.body)
			}
		})
	}
}

// TestNetworkCreateRefusals: driver flags that do not go together are
// refused before anything is looked up or created.
func TestNetworkCreateRefusals(t *testing.T) {
	base := []string{"network", "create", "--name", "n", "--subnet", "198.18.8.0/24", "--router", "198.18.8.1", "--print"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--driver", "overlay"}, `invalid --driver "overlay"`},
		{[]string{"--parent", "eth0.8"}, "--parent and --ipvlan-mode are for --driver macvlan|ipvlan"},
		{[]string{"--driver", "macvlan"}, "missing --parent"},
		{[]string{"--driver", "macvlan", "--parent", "eth0.8", "--bridge", "br0"}, "--bridge is for --driver bridge"},
		{[]string{"--driver", "macvlan", "--parent", "eth0.8", "--ipvlan-mode", "l2"}, "--ipvlan-mode is for --driver ipvlan"},
		{[]string{"--driver", "ipvlan", "--parent", "eth0.8", "--ipvlan-mode", "l3"}, `invalid --ipvlan-mode "l3": only l2`},
		{[]string{"--driver", "macvlan", "--parent", "nosuch9.8"}, "parent link nosuch9.8 not found on this host: create it with `ipamctl vlan setup --nic nosuch9 --id 8`"},
	} {
		_, err := runCtl(t, append(base, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

// runCtl runs ipamctl in-process without etcd, returning its stdout.
func runCtl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"ipamctl"}, args...))
	return out.String(), err
}

func TestNetworkCreatePrintMacvlan(t *testing.T) {
	out, err := runCtl(t, "network", "create", "--name", "v8", "--driver", "macvlan", "--parent", "lo",
		"--subnet", "198.18.8.0/24", "--router", "198.18.8.1", "--print")
	want := "docker network create -d macvlan --ipam-driver talkingdata --ipam-opt talkingdata.gateway=router" +
		" --subnet 198.18.8.0/24 --gateway 198.18.8.1 -o parent=lo v8\n"
	if err != nil || out != want {
		t.Fatalf("--print: %q, %v; want %q", out, err, want)
	}
}

// TestNetworkCreateFlags: flag mistakes are refused before anything is
// looked up (this test has no bridge, no etcd and no dockerd).
func TestNetworkCreateFlags(t *testing.T) {
	base := []string{"network", "create", "--name", "lan", "--subnet", "198.18.0.0/16", "--router", "198.18.0.1", "--bridge", "nosuchbr", "--print"}
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
		if _, err := runCtl(t, append(base, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// setFields renders v as JSON with its zero fields left out, as what a
// request sets.
func setFields(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(dropZero(m))
	return string(out)
}

func dropZero(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if x = dropZero(x); x == nil || x == false || x == "" {
				delete(v, k)
			} else {
				v[k] = x
			}
		}
	case []any:
		for i, x := range v {
			v[i] = dropZero(x)
		}
	}
	return v
}
