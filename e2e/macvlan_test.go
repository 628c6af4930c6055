package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/lab"
	"github.com/talkingdata/ipam/internal/vm"
)

// macvlanCase is one network of TestMacvlanAcrossHosts or TestMacvlanOnVLAN:
// a driver on eth0, or on VLAN vlan made by ipamctl vlan setup.
type macvlanCase struct {
	name, driver    string
	vlan            int
	subnet, ipRange string
	router          string
}

// TestMacvlanAcrossHosts: a macvlan network with talkingdata IPAM on two
// hosts of the lab, on the untagged LAN. Each host's network names the LAN
// router as gateway; containers of the two hosts reach each other and the
// router, but not their own host, until the shim.
func TestMacvlanAcrossHosts(t *testing.T) {
	if missing := missingOptions(t, "macvlan"); vm.RunUnless(t, missing == "", missing) {
		return
	}
	acrossHosts(t, lab.Options{Hosts: 2, BinDir: binDir},
		macvlanCase{"macvlan untagged", "macvlan", 0, "198.18.0.0/16", "198.18.2.0/26", "198.18.0.1"})
}

// TestMacvlanOnVLAN: the same for macvlan and ipvlan L2 networks on VLAN 8
// (a tagged link through the switch, whose bridge passes tagged frames; the
// router gets VLAN 8 too). dockerd refuses ipvlan endpoints with a MAC, so
// the plugin asks for none (--endpoint-mac=false), which needs Docker 29's
// endpoint names. A kernel without 802.1Q or ipvlan runs the test in a VM
// (internal/vm).
func TestMacvlanOnVLAN(t *testing.T) {
	if missing := missingOptions(t, "vlan", "macvlan", "ipvlan"); vm.RunUnless(t, missing == "", missing) {
		return
	}
	engine := dockertest.LookupEngine(t, "29")
	acrossHosts(t, lab.Options{Hosts: 2, BinDir: binDir, Engines: []dockertest.Engine{engine, engine}, PluginArgs: []string{"--endpoint-mac=false"}},
		macvlanCase{"macvlan on VLAN 8", "macvlan", 8, "198.19.8.0/24", "198.19.8.128/26", "198.19.8.1"},
		macvlanCase{"ipvlan l2 on VLAN 8", "ipvlan", 8, "198.19.8.0/24", "198.19.8.128/26", "198.19.8.1"})
}

// acrossHosts brings up a two-host lab and runs each case on it in turn.
func acrossHosts(t *testing.T, o lab.Options, cases ...macvlanCase) {
	l := lab.UpWith(t, o)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { macvlanNetwork(t, l, c) })
	}
}

// macvlanNetwork makes c's network on hosts 1 and 2 with a container on
// each, checks their addresses and reach, then removes it all.
func macvlanNetwork(t *testing.T, l *lab.Lab, c macvlanCase) {
	ctl := labCtl(t, l)
	parent := "eth0"
	if c.vlan != 0 {
		parent = fmt.Sprintf("eth0.%d", c.vlan)
		for h := 1; h <= 2; h++ {
			ctl(h, "vlan", "setup", "--nic", "eth0", "--id", fmt.Sprint(c.vlan))
		}
		routerVLAN(t, l, c.vlan, c.router+"/24")
	}
	ctl(1, "init-range", "--subnet", c.subnet, "--range", c.ipRange)
	for h := 1; h <= 2; h++ {
		ctl(h, "network", "create", "--name", "mv", "--driver", c.driver, "--parent", parent, "--subnet", c.subnet,
			"--ip-range", c.ipRange, "--router", c.router, "--docker-host", l.DockerHost(h))
	}
	addr := map[int]string{}
	for h := 1; h <= 2; h++ {
		l.Docker(t, h, "run", "-d", "--init", "--name", "web", "--network", "mv", l.Image(), "sleep", "600")
		addr[h] = strings.TrimSpace(l.Docker(t, h, "inspect", "-f", `{{(index .NetworkSettings.Networks "mv").IPAddress}}`, "web"))
		if a, err := netip.ParseAddr(addr[h]); err != nil || !netip.MustParsePrefix(c.ipRange).Contains(a) {
			t.Fatalf("host %d's container has %q, want an address in %s", h, addr[h], c.ipRange)
		}
		if route := l.Docker(t, h, "exec", "web", "ip", "route"); !strings.Contains(route, "default via "+c.router) {
			t.Fatalf("host %d's container does not route via the router:\n%s", h, route)
		}
	}
	if addr[1] == addr[2] {
		t.Fatalf("both containers have %s", addr[1])
	}
	l.Docker(t, 1, "exec", "web", "ping", "-c1", "-W2", addr[2])
	l.Docker(t, 2, "exec", "web", "ping", "-c1", "-W2", addr[1])
	l.Docker(t, 1, "exec", "web", "ping", "-c1", "-W2", c.router)
	if c.vlan == 0 {
		// The parent's own address is out of the containers' reach
		// (the kernel does not pass traffic between a macvlan and
		// its parent); another host's is not.
		if out, err := l.TryDocker(1, "exec", "web", "ping", "-c1", "-W1", l.HostAddr(1).String()); err == nil {
			t.Fatalf("a macvlan container reached its own host %s:\n%s", l.HostAddr(1), out)
		}
		l.Docker(t, 1, "exec", "web", "ping", "-c1", "-W2", l.HostAddr(2).String())
		shim(t, l, addr[1])
	}

	checkRouterHeld(t, ctl(1, "addr", "ls", c.subnet, "--json"), c.router, 2, 2)
	ctl(1, "check", c.subnet)

	for h := 1; h <= 2; h++ {
		l.Docker(t, h, "rm", "-f", "web")
		l.Docker(t, h, "network", "rm", "mv")
	}
	checkRouterHeld(t, ctl(1, "addr", "ls", c.subnet, "--json"), c.router, 0, 0)
	ctl(1, "check", c.subnet)
	if c.vlan != 0 {
		for h := 1; h <= 2; h++ {
			ctl(h, "vlan", "teardown", "--nic", "eth0", "--id", fmt.Sprint(c.vlan))
		}
	}
}

// missingOptions names the kernel options (CONFIG_…) this kernel lacks to
// make links of each kind (vlan, macvlan, ipvlan) on a veth, each tried in a
// throwaway network namespace; "" when it lacks none.
func missingOptions(t *testing.T, kinds ...string) string {
	t.Helper()
	var missing []string
	for _, kind := range kinds {
		link := "link add probe0 type veth peer name probe1\nlink add link probe0 name probe2 type " + kind
		if kind == "vlan" {
			link += " id 4094"
		}
		cmd := exec.Command("unshare", "--net", "ip", "-batch", "-")
		cmd.Stdin = strings.NewReader(link + "\n")
		out, err := cmd.CombinedOutput()
		switch {
		case err != nil && strings.Contains(string(out), "Unknown device type"):
			missing = append(missing, map[string]string{"vlan": "CONFIG_VLAN_8021Q", "macvlan": "CONFIG_MACVLAN", "ipvlan": "CONFIG_IPVLAN"}[kind])
		case err != nil:
			t.Fatalf("making a %s link: %v\n%s", kind, err, out)
		}
	}
	return strings.Join(missing, " and ")
}

// routerVLAN gives the lab's router (in the switch's namespace) the VLAN
// too, with addr, unless it has it.
func routerVLAN(t *testing.T, l *lab.Lab, id int, addr string) {
	t.Helper()
	name := fmt.Sprintf("router.%d", id)
	if _, err := l.TryNode("sw", "ip", "link", "show", name); err == nil {
		return
	}
	for _, args := range [][]string{
		{"ip", "link", "add", "link", "router", "name", name, "type", "vlan", "id", fmt.Sprint(id)},
		{"ip", "addr", "add", addr, "dev", name},
		{"ip", "link", "set", name, "up"},
	} {
		if out, err := l.TryNode("sw", args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
}

// shim is the documented way for a host to reach its macvlan containers:
// a macvlan of its own on the parent, with an address, and a route to the
// container through it. The shim's address is outside the ip-range.
func shim(t *testing.T, l *lab.Lab, container string) {
	t.Helper()
	for _, args := range [][]string{
		{"ip", "link", "add", "mvl-shim", "link", "eth0", "type", "macvlan", "mode", "bridge"},
		{"ip", "addr", "add", "198.18.2.250/32", "dev", "mvl-shim"},
		{"ip", "link", "set", "mvl-shim", "up"},
		{"ip", "route", "add", container + "/32", "dev", "mvl-shim"},
		{"ping", "-c1", "-W2", container},
	} {
		if out, err := l.Try(1, args...); err != nil {
			t.Fatalf("shim: %v\n%s", err, out)
		}
	}
	l.Docker(t, 1, "exec", "web", "ping", "-c1", "-W2", "198.18.2.250")
	if out, err := l.Try(1, "ip", "link", "del", "mvl-shim"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// checkRouterHeld checks, in `addr ls --json`, that the router is an aux
// entry held by hosts hosts (0: absent) and that there are containers
// container addresses.
func checkRouterHeld(t *testing.T, addrLs, router string, hosts, containers int) {
	t.Helper()
	var used []struct {
		Address string
		Kind    string
		Holders map[string]int
	}
	if err := json.Unmarshal([]byte(addrLs), &used); err != nil {
		t.Fatal(err)
	}
	n, held := 0, 0
	for _, u := range used {
		switch {
		case u.Kind == "container":
			n++
		case u.Address == router && u.Kind == "aux":
			held = len(u.Holders)
		case u.Address == router:
			t.Fatalf("router %s recorded as %s, want aux", router, u.Kind)
		}
	}
	if n != containers || held != hosts {
		t.Fatalf("%d container addresses and the router held by %d hosts; want %d and %d:\n%s", n, held, containers, hosts, addrLs)
	}
}
