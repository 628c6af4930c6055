package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/lab"
)

// swarmAddrPool is where swarm numbers its own overlay networks (ingress):
// inside the lab's 198.18.0.0/15, apart from the lab dockerds' local pools.
const swarmAddrPool = "198.19.192.0/18"

// TestSwarm runs a replicated service on a three-node swarm over the flat
// L2: every node has a --config-only network naming talkingdata as IPAM
// (h1 through the managed plugin, h2 and h3 through the legacy one) and the
// managers a --scope swarm --config-from network, so each node's plugin
// allocates its own tasks' addresses from the shared pool.
func TestSwarm(t *testing.T) {
	l, ctl := seededLAN(t)
	swarmOf(t, l)

	// dockerd does not hand a legacy plugin networks that swarm's managers allocate.
	out, err := l.TryDocker(1, "network", "create", "-d", "overlay", "--ipam-driver", "talkingdata", "--subnet", lanSubnet, "ov")
	if err == nil || !strings.Contains(err.Error()+out, "not supported in swarm mode") {
		t.Fatalf("overlay with the legacy plugin: %v %s", err, out)
	}

	// h1 swaps its legacy plugin for the managed one, with the same host id.
	if err := l.KillPlugin(1); err != nil {
		t.Fatal(err)
	}
	// With h1's own CLI: Docker 29 refuses the 20.10 CLI's API version.
	makePluginWith(t, l.Engine(1).Docker, l.DockerHost(1), func(args ...string) (string, error) { return l.TryDocker(1, args...) })
	l.Docker(t, 1, "plugin", "set", managedPlugin, "IPAM_HOST_ID=h1", "IPAM_ETCD_ENDPOINTS="+strings.Join(l.Etcd(), ","))
	l.Docker(t, 1, "plugin", "enable", managedPlugin)

	// The managed plugin is handed manager-allocated networks and refuses
	// them; dockerd creates the network anyway and only its log says why.
	l.Docker(t, 1, "network", "create", "-d", "overlay", "--ipam-driver", managedPlugin, "--subnet", lanSubnet, "--ip-range", lanRange, "ov")
	dockerdLog := filepath.Join(l.Dir, "h1", "dockerd.log")
	waitUntil(t, 30*time.Second, "the refusal of the overlay in h1's dockerd log", func() bool {
		b, _ := os.ReadFile(dockerdLog)
		return slices.ContainsFunc(strings.Split(string(b), "\n"), func(line string) bool {
			return strings.Contains(line, "Failed allocation for network") &&
				strings.Contains(line, "does not serve networks whose addresses swarm's managers allocate")
		})
	})
	l.Docker(t, 1, "network", "rm", "ov")

	for h := 1; h <= 3; h++ {
		ipamDriver := "talkingdata"
		if h == 1 {
			ipamDriver = managedPlugin
		}
		ctl(h, "network", "create", "--config-only", "--name", "lan-config", "--subnet", lanSubnet, "--ip-range", lanRange,
			"--router", lanRouter, "--ipam-driver", ipamDriver, "--docker-host", l.DockerHost(h))
	}
	l.Docker(t, 1, "network", "create", "-d", "bridge", "--scope", "swarm", "--config-from", "lan-config", "lan")

	// By image ID: a name would make every node try a registry.
	image := l.Docker(t, 1, "image", "inspect", "-f", "{{.Id}}", l.Image())
	const replicas = 6
	l.Docker(t, 1, "service", "create", "--detach", "--no-resolve-image", "--name", "web", "--replicas", fmt.Sprint(replicas),
		"--network", "lan", "--stop-grace-period", "1s", image, "sleep", "600")
	tasks := map[int][]string{} // host → its running task containers
	waitUntil(t, 2*time.Minute, fmt.Sprintf("%d running tasks", replicas), func() bool {
		n := 0
		for h := 1; h <= 3; h++ {
			tasks[h] = serviceContainers(t, l, h, "running")
			n += len(tasks[h])
		}
		return n == replicas
	})

	taskHost := map[netip.Addr]string{}
	var addrOn [4]netip.Addr // a task's address on each host
	for h := 1; h <= 3; h++ {
		if len(tasks[h]) == 0 {
			t.Fatalf("no task runs on h%d: %v", h, tasks)
		}
		for _, c := range tasks[h] {
			a := lanAddr(t, l, h, c)
			if _, dup := taskHost[a]; dup {
				t.Fatalf("%s handed to two tasks", a)
			}
			taskHost[a] = fmt.Sprintf("h%d", h)
			addrOn[h] = a
		}
	}
	// etcd records each task's address as a container of the node running it.
	recorded := 0
	for _, u := range usedAddrs(t, ctl) {
		if u.Kind != "container" {
			continue
		}
		recorded++
		if want := taskHost[netip.MustParseAddr(u.Address)]; u.Host != want {
			t.Fatalf("etcd records %s for host %q, the task runs on %q", u.Address, u.Host, want)
		}
	}
	if recorded != replicas {
		t.Fatalf("etcd records %d container addresses, want %d", recorded, replicas)
	}
	// Across the flat L2, node to node.
	l.Docker(t, 1, "exec", tasks[1][0], "ping", "-c1", "-W2", addrOn[3].String())
	l.Docker(t, 3, "exec", tasks[3][0], "ping", "-c1", "-W2", addrOn[2].String())
	t.Logf("%d tasks on 3 nodes got %v", replicas, taskHost)
	ctl(1, "check", lanSubnet)

	// Removing the service releases every task's address; each node drops
	// its instance of the network, and its gateway claim, once unused.
	l.Docker(t, 1, "service", "rm", "web")
	waitUntil(t, time.Minute, "the tasks' containers removed", func() bool {
		for h := 1; h <= 3; h++ {
			if len(serviceContainers(t, l, h, "")) > 0 {
				return false
			}
		}
		return true
	})
	waitUntil(t, time.Minute, "every node's gateway and router claims released", func() bool {
		for _, u := range usedAddrs(t, ctl) {
			if u.Kind != "host" || len(u.Holders) > 0 { // a gateway claim is a holder on the host's record
				return false
			}
		}
		return true
	})
	l.Docker(t, 1, "network", "rm", "lan")
	waitUntil(t, time.Minute, "every node's instance of lan removed", func() bool {
		for h := 1; h <= 3; h++ {
			if slices.Contains(strings.Fields(l.Docker(t, h, "network", "ls", "--format", "{{.Name}}")), "lan") {
				return false
			}
		}
		return true
	})
	for h := 1; h <= 3; h++ {
		l.Docker(t, h, "network", "rm", "lan-config")
	}
	assertOnlyHostsUsed(t, ctl)
}

// swarmOf makes the lab's hosts one swarm, h1 its manager and the others
// workers, and waits until every node is ready.
func swarmOf(t *testing.T, l *lab.Lab) {
	t.Helper()
	l.Docker(t, 1, "swarm", "init", "--advertise-addr", l.HostAddr(1).String(), "--default-addr-pool", swarmAddrPool)
	token := l.Docker(t, 1, "swarm", "join-token", "-q", "worker")
	for h := 2; h <= l.Hosts(); h++ {
		l.Docker(t, h, "swarm", "join", "--advertise-addr", l.HostAddr(h).String(), "--token", token, l.HostAddr(1).String()+":2377")
	}
	waitUntil(t, time.Minute, fmt.Sprintf("%d swarm nodes ready", l.Hosts()), func() bool {
		return strings.Count(l.Docker(t, 1, "node", "ls", "--format", "{{.Status}}"), "Ready") == l.Hosts()
	})
}

// serviceContainers lists the containers of service web on host h, in
// state status ("" for any).
func serviceContainers(t *testing.T, l *lab.Lab, h int, status string) []string {
	t.Helper()
	args := []string{"ps", "-aq", "--filter", "label=com.docker.swarm.service.name=web"}
	if status != "" {
		args = append(args, "--filter", "status="+status)
	}
	return strings.Fields(l.Docker(t, h, args...))
}

// waitUntil polls cond every 200 ms until it holds, failing the test as
// not reaching what after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s", what, timeout)
		}
	}
}
