package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/dockertest"
)

// mixedEngines are the engines of TestMixedEngines' hosts h1, h2, h3: a cluster in the middle of
// a rolling upgrade from Debian's 20.10 to Docker 29.
var mixedEngines = []string{"20.10", "28.5", "29"}

// TestMixedEngines is the flat L2 of TestThreeHostsFlatL2 on three hosts that each run another
// dockerd (20.10, 28.5, 29), each driven by its own CLI: one talkingdata network per host on the
// shared subnet, a container on each, their addresses distinct and recorded in etcd as that
// host's, every container reaching the other two, and the pool as it was after cleanup.
func TestMixedEngines(t *testing.T) {
	for _, name := range mixedEngines {
		dockertest.LookupEngine(t, name) // skips (fails in CI) naming `make test-deps` when missing
	}
	// The lab takes its hosts' engines from here, so flatL2 builds this cluster unchanged.
	t.Setenv("TALKINGDATA_LAB_ENGINES", strings.Join(mixedEngines, ","))
	l, ctl := flatL2(t)

	for h := 1; h <= 3; h++ {
		e := l.Engine(h)
		if e.Name != mixedEngines[h-1] {
			t.Fatalf("host %d runs engine %q, want %s", h, e.Name, mixedEngines[h-1])
		}
		t.Logf("host %d: engine %s, %s", h, e.Name, l.Docker(t, h, "version", "--format",
			"server {{.Server.Version}} API {{.Server.APIVersion}}, client {{.Client.Version}}"))
	}

	addr := map[int]netip.Addr{}
	holder := map[netip.Addr]int{}
	for h := 1; h <= 3; h++ {
		l.Docker(t, h, "run", "-d", "--init", "--name", "mix", "--network", "lan", l.Image(), "sleep", "600")
		a := lanAddr(t, l, h, "mix")
		if other, dup := holder[a]; dup {
			t.Fatalf("%s handed to host %d and to host %d", a, h, other)
		}
		addr[h], holder[a] = a, h
	}
	t.Logf("addresses: h1 (20.10) %s, h2 (28.5) %s, h3 (29) %s", addr[1], addr[2], addr[3])

	containers := 0
	for _, u := range usedAddrs(t, ctl) {
		if u.Kind != "container" {
			continue
		}
		containers++
		h, ok := holder[netip.MustParseAddr(u.Address)]
		if !ok || u.Host != fmt.Sprintf("h%d", h) {
			t.Errorf("etcd has container address %s of host %q; the containers: %v", u.Address, u.Host, addr)
		}
	}
	if containers != 3 {
		t.Errorf("etcd has %d container addresses, want 3", containers)
	}

	for h := 1; h <= 3; h++ {
		for g := 1; g <= 3; g++ {
			if g != h {
				l.Docker(t, h, "exec", "mix", "ping", "-c1", "-W2", addr[g].String())
			}
		}
	}

	for h := 1; h <= 3; h++ {
		l.Docker(t, h, "rm", "-f", "mix")
		l.Docker(t, h, "network", "rm", "lan")
	}
	assertOnlyHostsUsed(t, ctl)
}
