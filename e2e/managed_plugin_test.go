package e2e

import (
	"encoding/json"
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

// The daemon's refusal without endpoints, and what it says before it waits to be stopped.
const (
	noEndpoints = "no etcd endpoints and the embedded etcd is off"
	holding     = "not serving; waiting to be stopped (--hold-on-error)"
)

// TestManagedPlugin runs the v2 plugin's life on every engine of the matrix
// (dockertest.MatrixEngines), each on its own private dockerd, at the same time.
func TestManagedPlugin(t *testing.T) {
	for _, e := range dockertest.MatrixEngines(t) {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			managedPluginLifecycle(t, e)
		})
	}
}

// managedPluginLifecycle builds the plugin with `make plugin` against a private dockerd of
// engine e and follows OPERATIONS' commands as on a fresh host: it creates no
// /etc/talkingdata-ipam and sets no tls.source. It shows that the plugin refuses to start
// without etcd endpoints (once, without dockerd restarting it), that the next enable with
// endpoints set succeeds outright, that the plugin allocates from the etcd `docker plugin set`
// names, and that it follows that setting after a disable/enable to a second etcd, one that
// speaks TLS only, reached through the tls mount. The plugin runs in dockerd's network
// namespace; each etcd reaches it through a forwarded loopback port there.
func managedPluginLifecycle(t *testing.T, e dockertest.Engine) {
	etcd1 := etcdtest.Start(t)
	etcd2 := etcdtest.StartSecure(t, etcdtest.SecureOptions{})
	d := dockertest.Start(t, dockertest.Options{Engine: e})
	image := d.ImportBusybox(t)

	makePluginWith(t, d.Engine().Docker, d.Host(), d.Docker)
	d.MustDocker(t, "plugin", "set", managedPlugin, "IPAM_HOST_ID="+host)
	checkDefaultMounts(t, d)

	// No endpoints: the plugin says why and waits; dockerd finds no socket, gives up and stops
	// it. The refusal is logged once: a plugin that exited would be restarted by dockerd, and
	// the restarts would race with the next enable.
	start := time.Now()
	if out, err := d.Docker("plugin", "enable", managedPlugin); err == nil {
		t.Fatalf("plugin enabled without IPAM_ETCD_ENDPOINTS: %s", out)
	}
	t.Logf("enable without endpoints failed after %v", time.Since(start).Round(100*time.Millisecond))
	log := d.LogTail(100000)
	if n := strings.Count(log, noEndpoints); n != 1 || !strings.Contains(log, holding) {
		t.Fatalf("dockerd's log carries the plugin's refusal %d times (want 1, then %q):\n%s", n, holding, d.LogTail(200))
	}

	st1 := state{t: t, store: etcdstore.New(etcd1.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}
	st2 := state{t: t, store: etcdstore.New(etcd2.Client(t), etcdstore.DefaultPrefix), net: netip.MustParsePrefix(subnet)}
	enable := func(settings ...string) {
		t.Helper()
		d.MustDocker(t, append([]string{"plugin", "set", managedPlugin}, settings...)...)
		if out, err := d.Docker("plugin", "enable", managedPlugin); err != nil {
			t.Fatalf("%v %s\n%s", err, out, d.LogTail(60))
		}
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

	enable("IPAM_ETCD_ENDPOINTS=http://" + d.Forward(t, strings.TrimPrefix(etcd1.Endpoints()[0], "http://")))
	t.Logf("with etcd 1: containers got %v", runOn(st1, st2))
	// A network holds the plugin: disabling it would strand the network's calls.
	d.MustDocker(t, "network", "create", "--ipam-driver", managedPlugin, "--subnet", subnet, "--gateway", gateway,
		"-o", "com.docker.network.bridge.name=tdbr0", netName)
	if out, err := d.Docker("plugin", "disable", managedPlugin); err == nil {
		t.Fatalf("plugin disabled while network %s uses it: %s", netName, out)
	}
	d.MustDocker(t, "network", "rm", netName)
	d.MustDocker(t, "plugin", "disable", managedPlugin)

	// TLS, as OPERATIONS says: the files in a host directory, tls.source naming it.
	tlsDir := filepath.Join(t.TempDir(), "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{"ca.pem": etcd2.CACert, "client.pem": etcd2.ClientCert, "client-key.pem": etcd2.ClientKey} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The server certificate is for 127.0.0.1, which the forwarded port also is.
	enable("tls.source="+tlsDir,
		"IPAM_ETCD_ENDPOINTS=https://"+d.Forward(t, strings.TrimPrefix(etcd2.Endpoints()[0], "https://")),
		"IPAM_ETCD_CACERT=/etc/talkingdata-ipam/ca.pem",
		"IPAM_ETCD_CERT=/etc/talkingdata-ipam/client.pem",
		"IPAM_ETCD_KEY=/etc/talkingdata-ipam/client-key.pem")
	t.Logf("with etcd 2 (TLS): containers got %v", runOn(st2, st1))
}

// checkDefaultMounts fails the test unless the plugin, as created, mounts only what every
// host has: its tls mount's default source is /run/docker/plugins, which dockerd creates
// before it starts any plugin, and not /etc/talkingdata-ipam, which a fresh host lacks (and
// this machine may have, which would hide the difference).
func checkDefaultMounts(t *testing.T, d *dockertest.Daemon) {
	t.Helper()
	var mounts []struct {
		Name   string
		Source *string
	}
	out := d.MustDocker(t, "plugin", "inspect", "-f", "{{json .Settings.Mounts}}", managedPlugin)
	if err := json.Unmarshal([]byte(out), &mounts); err != nil {
		t.Fatalf("plugin inspect: %v: %s", err, out)
	}
	for _, m := range mounts {
		if m.Source == nil || *m.Source != "/run/docker/plugins" {
			t.Fatalf("the plugin's mounts are %s: want only the tls mount from /run/docker/plugins, there on every host", out)
		}
	}
}

// makePluginWith creates the managed plugin, disabled, on the dockerd at dockerHost with `make
// plugin DOCKER=cli`, set to log at debug level, and removes it when the test ends; docker runs
// the docker CLI against that dockerd. Its mounts keep their defaults: what a fresh host gets.
func makePluginWith(t *testing.T, cli, dockerHost string, docker func(args ...string) (string, error)) {
	t.Helper()
	_, err := exec.LookPath("make")
	testproc.Require(t, err == nil, "no make (Debian package make)")
	dir := t.TempDir()
	mk := exec.Command("make", "-C", "..", "plugin", "PLUGIN_DIR="+filepath.Join(dir, "plugin"), "DOCKER="+cli)
	mk.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_HOST="+dockerHost, "DOCKER_CONFIG="+filepath.Join(dir, "cli"))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make plugin: %v\n%s", err, out)
	}
	t.Cleanup(func() { docker("plugin", "rm", "-f", managedPlugin) })
	if out, err := docker("plugin", "set", managedPlugin, "IPAM_LOG_LEVEL=debug"); err != nil {
		t.Fatalf("docker plugin set: %v %s", err, out)
	}
}
