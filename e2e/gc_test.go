package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// gcHost is the host id of the daemon in these tests.
const gcHost = "gc-host"

// gcSetup starts etcd, the daemon, dockerd and the network of e2e_test.go.
func gcSetup(t *testing.T) (*etcdtest.Server, *plugin, *dockertest.Daemon, state, string) {
	t.Helper()
	etcd := etcdtest.Start(t)
	pluginDir := t.TempDir()
	p := startPlugin(t, pluginDir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", gcHost, "--request-timeout", "3s")
	d := dockertest.Start(t, dockertest.Options{PluginDir: pluginDir})
	st := state{t: t, store: etcdstore.New(etcd.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}
	d.MustDocker(t, "network", "create", "-d", "bridge", "--ipam-driver", "talkingdata",
		"--subnet", subnet, "--ip-range", ipRange, "--gateway", gateway,
		"--aux-address", "DefaultGatewayIPv4="+router,
		"-o", "com.docker.network.bridge.name=tdbr0", "-o", "com.docker.network.bridge.enable_ip_masquerade=false", netName)
	return etcd, p, d, st, filepath.Join(pluginDir, "talkingdata.sock")
}

// ipamctl runs the real binary as this host, against etcd and dockerd.
func ipamctl(t *testing.T, etcd *etcdtest.Server, d *dockertest.Daemon, args ...string) (string, error) {
	t.Helper()
	return ipamctlAs(t, gcHost, etcd, d, args...)
}

// ipamctlAs runs the real binary as host, against etcd and dockerd.
func ipamctlAs(t *testing.T, host string, etcd *etcdtest.Server, d *dockertest.Daemon, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ipamctl"), append([]string{
		"--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", host}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DOCKER_HOST=" + d.Host()}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ipamctl %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// gcOut is the part of `ipamctl gc --json` the tests look at.
type gcOut struct {
	Addresses []struct {
		Address, Kind, Host, MAC, Result string
	}
}

func runGC(t *testing.T, etcd *etcdtest.Server, d *dockertest.Daemon, args ...string) map[string]string {
	t.Helper()
	out, err := ipamctl(t, etcd, d, append([]string{"gc", "--json"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var g gcOut
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		t.Fatalf("gc --json: %v\n%s", err, out)
	}
	res := map[string]string{}
	for _, a := range g.Addresses {
		if a.Kind != string(pool.KindContainer) || a.Host != gcHost {
			t.Fatalf("gc listed %+v: not a container address of this host", a)
		}
		res[a.Address] = a.Result
	}
	return res
}

// requestAddress asks the plugin for an address the way dockerd would,
// for an endpoint no container has.
func requestAddress(t *testing.T, sock, mac string) netip.Addr {
	t.Helper()
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	body, _ := json.Marshal(map[string]any{"PoolID": subnet + "@" + ipRange,
		"Options": map[string]string{"com.docker.network.endpoint.macaddress": mac}})
	resp, err := hc.Post("http://plugin/IpamDriver.RequestAddress", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Address, Err string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Err != "" {
		t.Fatalf("RequestAddress: %v %s", err, out.Err)
	}
	return netip.MustParsePrefix(out.Address).Addr()
}

// containerAddrs checks that the named containers have distinct
// addresses on netName, each recorded in etcd as this host's with its MAC.
func containerAddrs(t *testing.T, d *dockertest.Daemon, st state, names ...string) map[string]netip.Addr {
	t.Helper()
	used := st.used()
	got := map[string]netip.Addr{}
	holder := map[netip.Addr]string{}
	for _, name := range names {
		a, mac := inspect(t, d, name)
		if other, dup := holder[a]; dup {
			t.Fatalf("%s and %s both have %s", name, other, a)
		}
		holder[a], got[name] = name, a
		if u := used[a]; u == nil || u.Kind != pool.KindContainer || u.Host != gcHost || u.MAC != mac {
			t.Fatalf("%s (%s, mac %s) is recorded in etcd as %+v", name, a, mac, u)
		}
	}
	return got
}

// noLeaks checks that etcd holds no container address but those of names.
func noLeaks(t *testing.T, st state, names map[string]netip.Addr) {
	t.Helper()
	held := map[netip.Addr]bool{}
	for _, a := range names {
		held[a] = true
	}
	for a, u := range st.used() {
		if u.Kind == pool.KindContainer && !held[a] {
			t.Fatalf("etcd holds %s for %+v, which no container has", a, u)
		}
	}
}

func hostState(t *testing.T, etcd *etcdtest.Server, d *dockertest.Daemon) string {
	t.Helper()
	out, err := ipamctl(t, etcd, d, "host", "ls", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var hosts []struct{ Host, Live string }
	if err := json.Unmarshal([]byte(out), &hosts); err != nil {
		t.Fatalf("host ls --json: %v\n%s", err, out)
	}
	for _, h := range hosts {
		if h.Host == gcHost {
			return h.Live
		}
	}
	return ""
}

// TestGCFindsLeaks: running containers, a stopped one, a release lost
// while etcd was down (answered, then failed past the plugin's
// --request-timeout), and an address taken through the plugin socket
// for an endpoint no container has. gc lists exactly the two leaks, keeps
// them while younger than --min-age, and --apply frees them and nothing
// else.
func TestGCFindsLeaks(t *testing.T) {
	etcd, p, d, st, sock := gcSetup(t)
	image := d.ImportBusybox(t)
	if s := hostState(t, etcd, d); s != etcdstore.HostAlive {
		t.Fatalf("host ls: the running daemon's host is %q, want alive", s)
	}
	running := []string{"r1", "r2", "r3"}
	for _, name := range append(slices.Clone(running), "stopped", "lost") {
		d.MustDocker(t, "run", "-d", "--init", "--name", name, "--network", netName, image, "sleep", "600")
	}
	d.MustDocker(t, "stop", "-t", "1", "stopped") // releases its address, as it should
	lost, _ := inspect(t, d, "lost")
	etcd.Stop(t)
	// Answered at once; the plugin's transaction fails after its
	// --request-timeout (3s), leaving the address for gc.
	d.MustDocker(t, "stop", "-t", "1", "lost")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		b, _ := os.ReadFile(p.log)
		if strings.Contains(string(b), "release failed after dockerd was answered") && strings.Contains(string(b), lost.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plugin did not log the failed release of %s within 20s of etcd being stopped", lost)
		}
	}
	etcd.Restart(t)
	for deadline := time.Now().Add(20 * time.Second); hostState(t, etcd, d) != etcdstore.HostAlive; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon's host is not alive in etcd 20s after etcd came back")
		}
	}
	if u := st.used()[lost]; u == nil || u.Host != gcHost {
		t.Fatalf("after a release lost to an etcd outage, %s should still be used: %+v", lost, u)
	}
	stray := requestAddress(t, sock, "02:42:de:ad:be:ef")
	before := containerAddrs(t, d, st, running...)

	leaks := map[string]string{lost.String(): "orphan", stray.String(): "orphan"}
	young := map[string]string{lost.String(): "young", stray.String(): "young"}
	if got := runGC(t, etcd, d); !maps.Equal(got, young) {
		t.Fatalf("gc with the default --min-age: %v, want %v", got, young)
	}
	if got := runGC(t, etcd, d, "--min-age", "0s"); !maps.Equal(got, leaks) {
		t.Fatalf("gc --min-age 0s: %v, want exactly the leaks %v", got, leaks)
	}
	if out, err := ipamctl(t, etcd, d, "gc", "--min-age", "0s"); err != nil || !strings.Contains(out, stray.String()) || !strings.Contains(out, "orphan") {
		t.Fatalf("gc table: %v\n%s", err, out)
	}
	freed := map[string]string{lost.String(): "released", stray.String(): "released"}
	if got := runGC(t, etcd, d, "--min-age", "0s", "--apply"); !maps.Equal(got, freed) {
		t.Fatalf("gc --apply: %v, want %v", got, freed)
	}
	if got := runGC(t, etcd, d, "--min-age", "0s"); len(got) != 0 {
		t.Fatalf("gc after --apply: %v", got)
	}
	after := containerAddrs(t, d, st, running...)
	noLeaks(t, st, after)
	if !maps.Equal(addrStrings(before), addrStrings(after)) {
		t.Fatalf("running containers' addresses changed: %v → %v", before, after)
	}
	if used := st.used(); len(used) != len(running)+2 {
		t.Fatalf("used after gc: %v; want the running containers, the gateway and the router", used)
	}
	if _, err := ipamctl(t, etcd, d, "check"); err != nil {
		t.Fatal(err)
	}
	// Both stopped containers start again with working addresses.
	d.MustDocker(t, "start", "stopped", "lost")
	all := containerAddrs(t, d, st, append(running, "stopped", "lost")...)
	noLeaks(t, st, all)
	d.MustDocker(t, "exec", "lost", "ping", "-c1", "-W2", all["r1"].String())

	d.MustDocker(t, "rm", "-f", "r1", "r2", "r3", "stopped", "lost")

	// A clean SIGTERM revokes the lease: stopped at once, not dead later.
	p.stop()
	if s := hostState(t, etcd, d); s != etcdstore.HostStopped {
		t.Fatalf("host ls right after SIGTERM: %q, want stopped", s)
	}
}

// TestDockerdRestartNoLeaks is issue 4's scenario: dockerd restarts with
// containers running under --restart always (it stops them, releasing
// their addresses, and starts them again, requesting new ones). Afterwards
// every container has a working address, no two the same, and etcd holds
// exactly those: check finds nothing and gc no orphan.
func TestDockerdRestartNoLeaks(t *testing.T) {
	etcd, _, d, st, _ := gcSetup(t)
	image := d.ImportBusybox(t)
	var names []string
	for i := range 5 {
		name := fmt.Sprintf("always%d", i)
		names = append(names, name)
		// --init: busybox sleep as PID 1 ignores SIGTERM, and dockerd's
		// shutdown would wait the full stop timeout for each.
		d.MustDocker(t, "run", "-d", "--init", "--restart", "always", "--name", name, "--network", netName, image, "sleep", "600")
	}
	before := containerAddrs(t, d, st, names...)
	start := time.Now()
	d.Restart(t)
	for _, name := range names {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			out, _ := d.Docker("inspect", "-f", `{{.State.Running}} {{(index .NetworkSettings.Networks "`+netName+`").IPAddress}}`, name)
			if strings.HasPrefix(out, "true ") && len(out) > len("true ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not running with an address a minute after dockerd restarted: %q", name, out)
			}
		}
	}
	t.Logf("dockerd restarted and its %d containers running again after %s", len(names), time.Since(start).Round(time.Millisecond))
	after := containerAddrs(t, d, st, names...)
	noLeaks(t, st, after)
	t.Logf("addresses before %v, after %v", addrStrings(before), addrStrings(after))
	for i, name := range names {
		peer := after[names[(i+1)%len(names)]]
		if out, err := d.Docker("exec", name, "ping", "-c1", "-W2", peer.String()); err != nil {
			t.Fatalf("%s cannot reach %s: %v %s", name, peer, err, out)
		}
	}
	if used := st.used(); len(used) != len(names)+2 {
		t.Fatalf("used after the restart: %v; want %d containers, the gateway and the router", used, len(names))
	}
	if got := runGC(t, etcd, d, "--min-age", "0s"); len(got) != 0 {
		t.Fatalf("gc after the dockerd restart: %v", got)
	}
	if _, err := ipamctl(t, etcd, d, "check"); err != nil {
		t.Fatal(err)
	}
	d.MustDocker(t, append([]string{"rm", "-f"}, names...)...)
}

func addrStrings(m map[string]netip.Addr) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v.String()
	}
	return out
}
