package bridgesetup

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// simple is one address and a default route: the common host.
var simple = Layout{
	Bridge: "br0", NIC: "eth0", MAC: mustMAC("02:00:c6:12:00:0b"), MTU: 1500,
	Addrs:  []netip.Prefix{pfx("198.18.0.11/24")},
	Routes: []Route{{Dst: pfx("0.0.0.0/0"), Gw: ip("198.18.0.1")}},
}

// full has two addresses of each family, a jumbo MTU, plain default
// routes of both families, and routes that need more than a gateway key.
var full = Layout{
	Bridge: "br0", NIC: "eth0", MAC: mustMAC("02:00:c6:12:00:0b"), MTU: 9000,
	Addrs: []netip.Prefix{pfx("198.18.0.11/24"), pfx("198.18.1.11/24"), pfx("2001:db8::11/64"), pfx("2001:db8:1::11/64")},
	Routes: []Route{
		{Dst: pfx("0.0.0.0/0"), Gw: ip("198.18.0.1")},
		{Dst: pfx("198.19.5.0/24"), Gw: ip("198.18.0.12"), Metric: 50},
		{Dst: pfx("198.19.6.0/24")},
		{Dst: pfx("0.0.0.0/0"), Gw: ip("198.18.1.1"), Metric: 200, Table: 100, Src: ip("198.18.1.11")},
		{Dst: pfx("::/0"), Gw: ip("2001:db8::1")},
		{Dst: pfx("2001:db8:5::/64"), Gw: ip("2001:db8::12")},
	},
}

// bare bridges a NIC without addresses, and has no MAC to keep.
var bare = Layout{Bridge: "br1", NIC: "ens3"}

const hdr = "# Written by ipamctl bridge setup: br0 bridges eth0, with its MAC and addresses.\n"

func TestRender(t *testing.T) {
	for _, c := range []struct {
		name   string
		kind   string
		layout Layout
		want   map[string]string
	}{
		{"networkd simple", Networkd, simple, map[string]string{
			"/etc/systemd/network/10-br0.netdev":   hdr + "[NetDev]\nName=br0\nKind=bridge\nMACAddress=02:00:c6:12:00:0b\n",
			"/etc/systemd/network/10-eth0.network": hdr + "[Match]\nName=eth0\n\n[Network]\nBridge=br0\n",
			"/etc/systemd/network/10-br0.network": hdr + "[Match]\nName=br0\n\n[Link]\nMACAddress=02:00:c6:12:00:0b\n\n" +
				"[Network]\nAddress=198.18.0.11/24\nGateway=198.18.0.1\n",
		}},
		{"networkd full", Networkd, full, map[string]string{
			"/etc/systemd/network/10-br0.netdev":   hdr + "[NetDev]\nName=br0\nKind=bridge\nMACAddress=02:00:c6:12:00:0b\nMTUBytes=9000\n",
			"/etc/systemd/network/10-eth0.network": hdr + "[Match]\nName=eth0\n\n[Network]\nBridge=br0\n",
			"/etc/systemd/network/10-br0.network": hdr + `[Match]
Name=br0

[Link]
MACAddress=02:00:c6:12:00:0b

[Network]
Address=198.18.0.11/24
Address=198.18.1.11/24
Address=2001:db8::11/64
Address=2001:db8:1::11/64
Gateway=198.18.0.1
Gateway=2001:db8::1

[Route]
Destination=198.19.5.0/24
Gateway=198.18.0.12
Metric=50

[Route]
Destination=198.19.6.0/24
Scope=link

[Route]
Gateway=198.18.1.1
PreferredSource=198.18.1.11
Metric=200
Table=100

[Route]
Destination=2001:db8:5::/64
Gateway=2001:db8::12
`,
		}},
		{"networkd bare", Networkd, bare, map[string]string{
			"/etc/systemd/network/10-br1.netdev": "# Written by ipamctl bridge setup: br1 bridges ens3, with its MAC and addresses.\n" +
				"[NetDev]\nName=br1\nKind=bridge\n",
			"/etc/systemd/network/10-ens3.network": "# Written by ipamctl bridge setup: br1 bridges ens3, with its MAC and addresses.\n" +
				"[Match]\nName=ens3\n\n[Network]\nBridge=br1\n",
			"/etc/systemd/network/10-br1.network": "# Written by ipamctl bridge setup: br1 bridges ens3, with its MAC and addresses.\n" +
				"[Match]\nName=br1\n\n[Network]\n",
		}},
		{"ifupdown simple", Ifupdown, simple, map[string]string{
			"/etc/network/interfaces.d/br0": hdr + `auto br0
iface br0 inet static
	bridge_ports eth0
	bridge_stp off
	bridge_fd 0
	hwaddress 02:00:c6:12:00:0b
	address 198.18.0.11/24
	gateway 198.18.0.1

iface eth0 inet manual
`,
		}},
		{"ifupdown full", Ifupdown, full, map[string]string{
			"/etc/network/interfaces.d/br0": hdr + `auto br0
iface br0 inet static
	bridge_ports eth0
	bridge_stp off
	bridge_fd 0
	hwaddress 02:00:c6:12:00:0b
	mtu 9000
	address 198.18.0.11/24
	gateway 198.18.0.1

iface br0 inet static
	address 198.18.1.11/24

iface br0 inet6 static
	address 2001:db8::11/64
	gateway 2001:db8::1

iface br0 inet6 static
	address 2001:db8:1::11/64
	up ip route replace 198.19.5.0/24 via 198.18.0.12 dev br0 metric 50
	up ip route replace 198.19.6.0/24 dev br0
	up ip route replace default via 198.18.1.1 dev br0 src 198.18.1.11 metric 200 table 100
	up ip -6 route replace 2001:db8:5::/64 via 2001:db8::12 dev br0

iface eth0 inet manual
`,
		}},
		{"ifupdown bare", Ifupdown, bare, map[string]string{
			"/etc/network/interfaces.d/br1": "# Written by ipamctl bridge setup: br1 bridges ens3, with its MAC and addresses.\n" +
				"auto br1\niface br1 inet manual\n\tbridge_ports ens3\n\tbridge_stp off\n\tbridge_fd 0\n\niface ens3 inet manual\n",
		}},
		{"ifcfg simple", Ifcfg, simple, map[string]string{
			"/etc/sysconfig/network-scripts/ifcfg-br0": hdr + `DEVICE=br0
TYPE=Bridge
ONBOOT=yes
BOOTPROTO=none
MACADDR=02:00:c6:12:00:0b
STP=no
DELAY=0
IPADDR=198.18.0.11
PREFIX=24
GATEWAY=198.18.0.1
`,
			"/etc/sysconfig/network-scripts/ifcfg-eth0": hdr + `DEVICE=eth0
TYPE=Ethernet
ONBOOT=yes
BOOTPROTO=none
HWADDR=02:00:c6:12:00:0b
BRIDGE=br0
`,
		}},
		{"ifcfg full", Ifcfg, full, map[string]string{
			"/etc/sysconfig/network-scripts/ifcfg-br0": hdr + `DEVICE=br0
TYPE=Bridge
ONBOOT=yes
BOOTPROTO=none
MACADDR=02:00:c6:12:00:0b
STP=no
DELAY=0
MTU=9000
IPADDR=198.18.0.11
PREFIX=24
IPADDR1=198.18.1.11
PREFIX1=24
GATEWAY=198.18.0.1
IPV6INIT=yes
IPV6ADDR=2001:db8::11/64
IPV6ADDR_SECONDARIES="2001:db8:1::11/64"
IPV6_DEFAULTGW=2001:db8::1
`,
			"/etc/sysconfig/network-scripts/ifcfg-eth0": hdr + `DEVICE=eth0
TYPE=Ethernet
ONBOOT=yes
BOOTPROTO=none
HWADDR=02:00:c6:12:00:0b
BRIDGE=br0
MTU=9000
`,
			"/etc/sysconfig/network-scripts/route-br0": hdr + `198.19.5.0/24 via 198.18.0.12 dev br0 metric 50
198.19.6.0/24 dev br0
default via 198.18.1.1 dev br0 src 198.18.1.11 metric 200 table 100
`,
			"/etc/sysconfig/network-scripts/route6-br0": hdr + "2001:db8:5::/64 via 2001:db8::12 dev br0\n",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			files, err := Render(c.kind, c.layout)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, f := range files {
				got[f.Path] = f.Content
			}
			for path, want := range c.want {
				if got[path] != want {
					t.Errorf("%s:\n%s\nwant\n%s", path, got[path], want)
				}
			}
			for path := range got {
				if _, ok := c.want[path]; !ok {
					t.Errorf("unexpected file %s:\n%s", path, got[path])
				}
			}
		})
	}
}

func TestRenderRefuses(t *testing.T) {
	if _, err := Render("netplan", simple); err == nil || !strings.Contains(err.Error(), `unknown kind of persistent configuration "netplan": want one of systemd-networkd, ifupdown, ifcfg`) {
		t.Errorf("Render(netplan) = %v", err)
	}
	if _, err := Render(Ifcfg, Layout{Bridge: "br0"}); err == nil {
		t.Error("Render without a NIC: no error")
	}
}

func TestWriteFiles(t *testing.T) {
	root := t.TempDir()
	files, err := Render(Ifcfg, simple)
	if err != nil {
		t.Fatal(err)
	}
	// An ifcfg-eth0 of the host's own is in the way.
	eth0 := filepath.Join(root, "/etc/sysconfig/network-scripts/ifcfg-eth0")
	if err := os.MkdirAll(filepath.Dir(eth0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(eth0, []byte("DEVICE=eth0\nBOOTPROTO=dhcp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	written, err := WriteFiles(root, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 2 || written[0].Backup != "" || written[1].Backup != eth0+".bak" || written[0].Unchanged || written[1].Unchanged {
		t.Errorf("WriteFiles = %+v", written)
	}
	for _, f := range files {
		path := filepath.Join(root, f.Path)
		b, err := os.ReadFile(path)
		if err != nil || string(b) != f.Content {
			t.Errorf("%s = %q, %v; want %q", path, b, err, f.Content)
		}
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, %v; want 0644", path, st.Mode(), err)
		}
	}
	if b, err := os.ReadFile(eth0 + ".bak"); err != nil || string(b) != "DEVICE=eth0\nBOOTPROTO=dhcp\n" {
		t.Errorf("backup = %q, %v", b, err)
	}

	// Again: unchanged, and the backup of the original stays.
	written, err = WriteFiles(root, files)
	if err != nil || !written[0].Unchanged || !written[1].Unchanged {
		t.Errorf("WriteFiles again = %+v, %v", written, err)
	}
	files[1].Content += "MTU=9000\n"
	written, err = WriteFiles(root, files)
	if err != nil || written[1].Unchanged || written[1].Backup != "" {
		t.Errorf("WriteFiles with a change = %+v, %v", written, err)
	}
	if b, _ := os.ReadFile(eth0 + ".bak"); string(b) != "DEVICE=eth0\nBOOTPROTO=dhcp\n" {
		t.Errorf("backup overwritten: %q", b)
	}
	entries, err := os.ReadDir(filepath.Dir(eth0))
	if err != nil || len(entries) != 3 {
		t.Errorf("left in the directory: %v, %v (want ifcfg-br0, ifcfg-eth0, ifcfg-eth0.bak)", entries, err)
	}
}
