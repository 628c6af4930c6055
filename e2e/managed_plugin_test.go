package e2e

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
)

const managedPlugin = "talkingdata/ipam:latest"

// TestManagedPlugin builds the v2 plugin with `make plugin` against a private dockerd, and
// shows that it refuses to start without etcd endpoints, allocates from the etcd that
// `docker plugin set` names, and follows that setting to another etcd after a disable/enable.
// The plugin runs in dockerd's network namespace; each etcd reaches it through a forwarded
// loopback port there.
func TestManagedPlugin(t *testing.T) {
	etcd1, etcd2 := etcdtest.Start(t), etcdtest.Start(t)
	d := dockertest.Start(t, dockertest.Options{})
	image := d.ImportBusybox(t)

	makePlugin(t, d.Host(), d.Docker)
	d.MustDocker(t, "plugin", "set", managedPlugin, "IPAM_HOST_ID="+host)

	// No endpoints: the plugin exits with the fix in its message, dockerd gives up on it.
	if out, err := d.Docker("plugin", "enable", managedPlugin); err == nil {
		t.Fatalf("plugin enabled without IPAM_ETCD_ENDPOINTS: %s", out)
	}
	if log := d.LogTail(200); !strings.Contains(log, "no etcd endpoints and the embedded etcd is off") {
		t.Fatalf("dockerd's log does not carry the plugin's refusal:\n%s", log)
	}

	st1 := state{t: t, store: etcdstore.New(etcd1.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}
	st2 := state{t: t, store: etcdstore.New(etcd2.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}
	useEtcd := func(e *etcdtest.Server) {
		t.Helper()
		ep := "http://" + d.Forward(t, strings.TrimPrefix(e.Endpoints()[0], "http://"))
		d.MustDocker(t, "plugin", "set", managedPlugin, "IPAM_ETCD_ENDPOINTS="+ep)
		// After a failed enable, dockerd 20.10 may answer the next one with "id already in
		// use" and start the plugin all the same: what counts is that it ends up enabled.
		out, err := d.Docker("plugin", "enable", managedPlugin)
		if err == nil {
			return
		}
		for deadline := time.Now().Add(30 * time.Second); d.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", managedPlugin) != "true"; {
			if time.Now().After(deadline) {
				t.Fatalf("plugin not enabled 30s after %v %s", err, out)
			}
			time.Sleep(time.Second)
		}
		t.Logf("docker plugin enable said %v, yet the plugin is enabled", err)
	}
	// A network and two containers, recorded in st's etcd and not in other's; it returns their
	// addresses and removes everything again.
	runOn := func(st, other state) []netip.Addr {
		t.Helper()
		d.MustDocker(t, "network", "create", "-d", "bridge", "--ipam-driver", managedPlugin,
			"--subnet", subnet, "--ip-range", ipRange, "--gateway", gateway,
			"-o", "com.docker.network.bridge.name=tdbr0", netName)
		var addrs []netip.Addr
		for _, c := range []string{"m1", "m2"} {
			d.MustDocker(t, "run", "-d", "--name", c, "--network", netName, "--stop-timeout", "1", image, "sleep", "600")
			a, mac := inspect(t, d, c)
			if u := st.used()[a]; u == nil || u.Kind != pool.KindContainer || u.Host != host || u.MAC != mac {
				t.Fatalf("%s (%s, mac %s) is recorded in the plugin's etcd as %+v", c, a, mac, u)
			}
			if u := other.used()[a]; u != nil {
				t.Fatalf("%s (%s) is recorded in the etcd the plugin should not use: %+v", c, a, u)
			}
			addrs = append(addrs, a)
		}
		d.MustDocker(t, "rm", "-f", "m1", "m2")
		d.MustDocker(t, "network", "rm", netName)
		if used := st.used(); len(used) != 0 {
			t.Fatalf("after rm and network rm, the plugin's etcd still holds %v", used)
		}
		return addrs
	}

	useEtcd(etcd1)
	t.Logf("with etcd 1: containers got %v", runOn(st1, st2))
	// A network holds the plugin: disabling it would strand the network's calls.
	d.MustDocker(t, "network", "create", "--ipam-driver", managedPlugin, "--subnet", subnet, "--gateway", gateway,
		"-o", "com.docker.network.bridge.name=tdbr0", netName)
	if out, err := d.Docker("plugin", "disable", managedPlugin); err == nil {
		t.Fatalf("plugin disabled while network %s uses it: %s", netName, out)
	}
	d.MustDocker(t, "network", "rm", netName)
	d.MustDocker(t, "plugin", "disable", managedPlugin)
	useEtcd(etcd2)
	t.Logf("with etcd 2: containers got %v", runOn(st2, st1))
}

// makePlugin creates the managed plugin, disabled, on the dockerd at dockerHost with `make
// plugin`, set to log at debug level, and removes it when the test ends; docker runs the docker
// CLI against that dockerd.
func makePlugin(t *testing.T, dockerHost string, docker func(args ...string) (string, error)) {
	t.Helper()
	_, err := exec.LookPath("make")
	testproc.Require(t, err == nil, "no make (Debian package make)")
	dir := t.TempDir()
	mk := exec.Command("make", "-C", "..", "plugin", "PLUGIN_DIR="+filepath.Join(dir, "plugin"))
	mk.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_HOST="+dockerHost, "DOCKER_CONFIG="+filepath.Join(dir, "cli"))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make plugin: %v\n%s", err, out)
	}
	t.Cleanup(func() { docker("plugin", "rm", "-f", managedPlugin) })
	// The TLS mount's default source, /etc/talkingdata-ipam, need not exist on a test machine.
	tls := filepath.Join(dir, "tls")
	if err := os.Mkdir(tls, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := docker("plugin", "set", managedPlugin, "tls.source="+tls, "IPAM_LOG_LEVEL=debug"); err != nil {
		t.Fatalf("docker plugin set: %v %s", err, out)
	}
}
