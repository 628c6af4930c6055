// Package e2e drives the plugin with a real dockerd and a real etcd.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

const (
	subnet  = "198.18.0.0/24"
	ipRange = "198.18.0.128/25"
	gateway = "198.18.0.1"   // this host's own bridge address
	router  = "198.18.0.254" // the LAN router, inside the range on purpose: it must leave the free set
	netName = "tdnet"
	host    = "e2e-host"
)

// state reads the pool straight from etcd.
type state struct {
	t     *testing.T
	store *etcdstore.Store
	net   netip.Prefix
}

func (s state) used() map[netip.Addr]*pool.Allocation {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := s.store.Used(ctx, s.net)
	if err != nil {
		s.t.Fatal(err)
	}
	out := map[netip.Addr]*pool.Allocation{}
	for _, u := range list {
		out[u.Addr] = u.Allocation
	}
	return out
}

func (s state) freeCount() int64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, _, err := s.store.Counts(ctx, s.net)
	if err != nil {
		s.t.Fatal(err)
	}
	return f
}

// inspect returns a container's address and MAC on netName.
func inspect(t *testing.T, d *dockertest.Daemon, name string) (netip.Addr, string) {
	t.Helper()
	out := d.MustDocker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+netName+`").IPAddress}} {{(index .NetworkSettings.Networks "`+netName+`").MacAddress}}`, name)
	ip, mac, _ := strings.Cut(strings.TrimSpace(out), " ")
	a, err := netip.ParseAddr(ip)
	if err != nil {
		t.Fatalf("container %s has no address on %s: %q", name, netName, out)
	}
	return a, mac
}

// TestDockerLifecycle walks one host through the whole core loop with a
// real dockerd: network create, concurrent containers, --ip, stop and rm,
// an etcd outage, and network rm, checking etcd at every step.
func TestDockerLifecycle(t *testing.T) {
	etcd := etcdtest.Start(t)
	pluginDir := t.TempDir()
	startPlugin(t, pluginDir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", host, "--request-timeout", "3s")
	d := dockertest.Start(t, dockertest.Options{PluginDir: pluginDir})
	image := d.ImportBusybox(t)
	st := state{t: t, store: etcdstore.New(etcd.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}

	d.MustDocker(t, "network", "create", "-d", "bridge", "--ipam-driver", "talkingdata",
		"--subnet", subnet, "--ip-range", ipRange, "--gateway", gateway,
		"--aux-address", "DefaultGatewayIPv4="+router,
		"-o", "com.docker.network.bridge.name=tdbr0", "-o", "com.docker.network.bridge.enable_ip_masquerade=false", netName)
	used := st.used()
	gw, aux := used[netip.MustParseAddr(gateway)], used[netip.MustParseAddr(router)]
	if len(used) != 2 || gw == nil || gw.Kind != pool.KindGateway || gw.Holders[host] != 1 || aux == nil || aux.Kind != pool.KindAux || aux.Holders[host] != 1 {
		t.Fatalf("after network create, used = %v; want the gateway and the router, each held once by %s", used, host)
	}
	const seeded = 127 // .128-.254
	if f := st.freeCount(); f != seeded-1 {
		t.Fatalf("free after network create: %d, want %d (the router left the free set)", f, seeded-1)
	}

	// A fixed address first, then a duplicate of it.
	d.MustDocker(t, "run", "-d", "--name", "fixed", "--network", netName, "--ip", "198.18.0.200", image, "sleep", "600")
	if a, _ := inspect(t, d, "fixed"); a != netip.MustParseAddr("198.18.0.200") {
		t.Fatalf("--ip 198.18.0.200 gave %s", a)
	}
	out, err := d.Docker("run", "-d", "--name", "dup", "--network", netName, "--ip", "198.18.0.200", image, "sleep", "600")
	if err == nil || !strings.Contains(err.Error()+out, `198.18.0.200 is in use: container of host "`+host+`"`) {
		t.Fatalf("duplicate --ip: %v %s; want a refusal naming the holder", err, out)
	}
	d.Docker("rm", "-f", "dup")

	// 20 containers at once.
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := d.Docker("run", "-d", "--name", fmt.Sprintf("c%d", i), "--network", netName, image, "sleep", "600"); err != nil {
				errs <- fmt.Errorf("c%d: %v %s", i, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	used = st.used()
	r := netip.MustParsePrefix(ipRange)
	addrs := map[netip.Addr]string{}
	for i := range n {
		name := fmt.Sprintf("c%d", i)
		a, mac := inspect(t, d, name)
		if other, dup := addrs[a]; dup || !r.Contains(a) || a == netip.MustParseAddr(router) || a == netip.MustParseAddr("198.18.0.200") {
			t.Fatalf("%s got %s: taken by %q too, or outside %s, or reserved", name, a, other, ipRange)
		}
		addrs[a] = name
		if u := used[a]; u == nil || u.Kind != pool.KindContainer || u.Host != host || u.MAC != mac {
			t.Fatalf("%s (%s, mac %s) is recorded in etcd as %+v", name, a, mac, u)
		}
	}
	t.Logf("%d containers started at once got %d distinct addresses in %s", n, len(addrs), ipRange)
	if len(used) != n+3 {
		t.Fatalf("etcd has %d used entries; want %d containers, the fixed one, gateway and router", len(used), n)
	}
	if route := d.MustDocker(t, "exec", "c0", "ip", "route"); !strings.Contains(route, "default via "+router) {
		t.Fatalf("c0's routes do not go through the router aux address:\n%s", route)
	}

	// Stop gives the address back; start takes one again.
	a0, _ := inspect(t, d, "c0")
	d.MustDocker(t, "stop", "-t", "1", "c0")
	if u := st.used()[a0]; u != nil {
		t.Fatalf("after docker stop, %s is still used: %+v", a0, u)
	}
	d.MustDocker(t, "start", "c0")
	if a, _ := inspect(t, d, "c0"); st.used()[a] == nil {
		t.Fatalf("restarted c0 has %s, not recorded in etcd", a)
	}

	// etcd down: a clean, prompt refusal, and service resumes afterwards.
	etcd.Stop(t)
	start := time.Now()
	out, err = d.Docker("run", "-d", "--name", "during-outage", "--network", netName, image, "sleep", "600")
	if err == nil || !strings.Contains(err.Error()+out, "within 3s (--request-timeout)") {
		t.Fatalf("docker run with etcd down: %v %s; want the plugin's timeout message", err, out)
	}
	took := time.Since(start)
	if took > 30*time.Second {
		t.Fatalf("docker run with etcd down took %s", took)
	}
	t.Logf("with etcd down, docker run failed after %s: %s", took.Round(time.Millisecond), err.Error()+out)
	d.Docker("rm", "-f", "during-outage")
	etcd.Restart(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := d.Docker("run", "-d", "--name", "after-outage", "--network", netName, image, "sleep", "600")
		if err == nil {
			break
		}
		d.Docker("rm", "-f", "after-outage")
		if time.Now().After(deadline) {
			t.Fatalf("docker run still failing 30s after etcd returned: %v %s", err, out)
		}
		time.Sleep(time.Second)
	}

	// Removing every container returns every address.
	names := []string{"fixed", "after-outage"}
	for i := range n {
		names = append(names, fmt.Sprintf("c%d", i))
	}
	d.MustDocker(t, append([]string{"rm", "-f"}, names...)...)
	if used := st.used(); len(used) != 2 {
		t.Fatalf("after rm of every container, used = %v; want only the gateway and the router", used)
	}
	if f := st.freeCount(); f != seeded-1 {
		t.Fatalf("free after rm: %d, want %d", f, seeded-1)
	}

	// network rm drops the gateway and router references and the pool use.
	d.MustDocker(t, "network", "rm", netName)
	if used := st.used(); len(used) != 0 {
		t.Fatalf("after network rm, used = %v", used)
	}
	if f := st.freeCount(); f != seeded {
		t.Fatalf("free after network rm: %d, want all %d seeded (the router returns)", f, seeded)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if refs, err := st.store.Refs(ctx, st.net); err != nil || len(refs) != 0 {
		t.Fatalf("hosts still using the pool after network rm: %v %v", refs, err)
	}
}
