package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/talkingdata/ipam/internal/lab"
)

// Flat L2 across three hosts, as a network team would set it up: br0 with
// the NIC enslaved on every host, one seeded pool with the hosts' own
// addresses recorded, one Docker network per host on the shared subnet.
const (
	lanSubnet  = "198.18.0.0/16"
	lanRange   = "198.18.1.0/24"
	lanRouter  = "198.18.0.1"
	hostsRange = "198.18.0.11-198.18.0.13"
	perHost    = 10
)

// labCtl returns a function that runs ipamctl on a lab host against the
// lab's etcd and returns its stdout; it fails the test on error.
func labCtl(t testing.TB, l *lab.Lab) func(host int, args ...string) string {
	ipamctl := filepath.Join(binDir, "ipamctl")
	return func(host int, args ...string) string {
		t.Helper()
		return l.Exec(t, host, append([]string{ipamctl, "--etcd-endpoints", strings.Join(l.Etcd(), ",")}, args...)...)
	}
}

// seededLAN brings up a lab and sets it up as a network team would: br0
// on every host and the pool seeded with the hosts' addresses recorded.
// ctl runs ipamctl on a host.
func seededLAN(t *testing.T) (l *lab.Lab, ctl func(host int, args ...string) string) {
	t.Helper()
	l = lab.Up(t)
	ctl = labCtl(t, l)
	for h := 1; h <= 3; h++ {
		ctl(h, "bridge", "setup", "--nic", "eth0")
		// The host's address moved to br0; its peers are still reachable.
		l.Exec(t, h, "ping", "-c1", "-W2", lanRouter)
	}
	ctl(1, "init-range", "--subnet", lanSubnet, "--range", lanRange)
	ctl(1, "host-range", "--subnet", lanSubnet, "--range", hostsRange)
	return l, ctl
}

// flatL2 is seededLAN with the Docker network "lan" on every host.
func flatL2(t *testing.T) (l *lab.Lab, ctl func(host int, args ...string) string) {
	t.Helper()
	l, ctl = seededLAN(t)
	for h := 1; h <= 3; h++ {
		ctl(h, "network", "create", "--name", "lan", "--subnet", lanSubnet, "--ip-range", lanRange,
			"--router", lanRouter, "--docker-host", l.DockerHost(h))
	}
	return l, ctl
}

func TestThreeHostsFlatL2(t *testing.T) {
	l, ctl := flatL2(t)

	// Host 2 naming host 1's address as its gateway is the duplicate-IP
	// outage in the making: refused, naming host 1.
	out, err := l.TryDocker(2, "network", "create", "--ipam-driver", "talkingdata", "--subnet", lanSubnet,
		"--gateway", l.HostAddr(1).String(), "-o", "com.docker.network.bridge.name=dupbr", "dup")
	if err == nil || !strings.Contains(err.Error()+out, `host address of host "h1"`) {
		t.Fatalf("host 2 taking host 1's address as gateway: %v %s", err, out)
	}

	// Ten containers per host, all at once.
	var wg sync.WaitGroup
	errs := make(chan error, 3*perHost)
	for h := 1; h <= 3; h++ {
		for i := range perHost {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := l.TryDocker(h, "run", "-d", "--name", fmt.Sprintf("c%d", i), "--network", "lan", l.Image(), "sleep", "600"); err != nil {
					errs <- fmt.Errorf("host %d c%d: %v %s", h, i, err, out)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	holder := map[netip.Addr]string{}
	for h := 1; h <= 3; h++ {
		for i := range perHost {
			name := fmt.Sprintf("c%d", i)
			a := lanAddr(t, l, h, name)
			if other, dup := holder[a]; dup {
				t.Fatalf("%s handed to host %d %s and to %s", a, h, name, other)
			}
			holder[a] = fmt.Sprintf("host %d %s", h, name)
		}
	}
	t.Logf("%d containers on 3 hosts got %d distinct addresses in %s", 3*perHost, len(holder), lanRange)

	// Across the flat L2: a container on host 1 reaches one on host 3, and
	// host 2's own address; no NAT in between.
	target := strings.TrimSpace(l.Docker(t, 3, "inspect", "-f", `{{(index .NetworkSettings.Networks "lan").IPAddress}}`, "c0"))
	l.Docker(t, 1, "exec", "c0", "ping", "-c1", "-W2", target)
	l.Docker(t, 1, "exec", "c0", "ping", "-c1", "-W2", l.HostAddr(2).String())

	// etcd holds exactly the containers, the hosts' addresses (claimed as
	// their gateways) and the router.
	used := usedAddrs(t, ctl)
	kinds := map[string]int{}
	for _, u := range used {
		kinds[u.Kind]++
		switch u.Kind {
		case "container":
			if holder[netip.MustParseAddr(u.Address)] == "" {
				t.Fatalf("etcd has container address %s that no container holds", u.Address)
			}
		case "host":
			if u.Holders[u.Host] != 1 || len(u.Holders) != 1 {
				t.Fatalf("host address %s: %+v, want claimed by one host as its gateway", u.Address, u)
			}
		case "aux":
			if u.Address != lanRouter || len(u.Holders) != 3 {
				t.Fatalf("router entry %+v, want held by the 3 hosts", u)
			}
		}
	}
	if kinds["container"] != 3*perHost || kinds["host"] != 3 || kinds["aux"] != 1 || len(used) != 3*perHost+4 {
		t.Fatalf("used entries by kind %v, want %d containers, 3 hosts, 1 router", kinds, 3*perHost)
	}

	ctl(1, "check", lanSubnet) // fails the test on any anomaly

	// Tear it all down: every container address goes back.
	for h := 1; h <= 3; h++ {
		names := []string{"rm", "-f"}
		for i := range perHost {
			names = append(names, fmt.Sprintf("c%d", i))
		}
		l.Docker(t, h, names...)
		l.Docker(t, h, "network", "rm", "lan")
	}
	assertOnlyHostsUsed(t, ctl)
}

// lanAddr returns the address of container on host h in network "lan",
// failing the test unless it is in lanRange and the container's default
// route is the LAN router.
func lanAddr(t *testing.T, l *lab.Lab, h int, container string) netip.Addr {
	t.Helper()
	out := l.Docker(t, h, "inspect", "-f", `{{(index .NetworkSettings.Networks "lan").IPAddress}}`, container)
	a, err := netip.ParseAddr(out)
	if err != nil || !netip.MustParsePrefix(lanRange).Contains(a) {
		t.Fatalf("host %d %s has address %q, want one in %s", h, container, out, lanRange)
	}
	if route := l.Docker(t, h, "exec", container, "ip", "route"); !strings.Contains(route, "default via "+lanRouter) {
		t.Fatalf("host %d %s does not route via the router:\n%s", h, container, route)
	}
	return a
}

// usedAddr is an entry of ipamctl addr ls --json.
type usedAddr struct {
	Address string
	Kind    string
	Host    string
	MAC     string
	Holders map[string]int
}

// usedAddrs lists lanSubnet's used addresses, as recorded in etcd.
func usedAddrs(t *testing.T, ctl func(host int, args ...string) string) []usedAddr {
	t.Helper()
	return usedAddrsIn(t, ctl, lanSubnet)
}

// usedAddrsIn lists subnet's used addresses, as recorded in etcd.
func usedAddrsIn(t testing.TB, ctl func(host int, args ...string) string, subnet string) []usedAddr {
	t.Helper()
	var used []usedAddr
	if err := json.Unmarshal([]byte(ctl(1, "addr", "ls", subnet, "--json")), &used); err != nil {
		t.Fatal(err)
	}
	return used
}

// assertOnlyHostsUsed checks, once containers and networks are gone, that
// every seeded address of lanRange is free again and only the 3 hosts'
// own addresses are used.
func assertOnlyHostsUsed(t *testing.T, ctl func(host int, args ...string) string) {
	t.Helper()
	var show struct {
		Size       int64
		Free       int64
		UsedByKind map[string]int
		Networks   map[string]int
	}
	if err := json.Unmarshal([]byte(ctl(1, "pool", "show", lanSubnet, "--json")), &show); err != nil {
		t.Fatal(err)
	}
	ctl(1, "check", lanSubnet)
	// Free ⊆ seeded always holds (check verifies it), so equal counts mean
	// equal sets.
	usedOther := 0
	for kind, n := range show.UsedByKind {
		if kind != "host" {
			usedOther += n
		}
	}
	if show.Free != show.Size || show.Size != 256 || usedOther != 0 || show.UsedByKind["host"] != 3 || len(show.Networks) != 0 {
		t.Fatalf("after removing everything: %+v; want all 256 seeded addresses free, only the 3 host addresses used, no networks", show)
	}
}
