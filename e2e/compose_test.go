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

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// TestCompose brings up docker-compose.test.yml on a private dockerd: etcd
// and the plugin as containers built offline, then, with
// docker-compose.test-app.yml, three test containers on a network that
// uses the plugin. Their addresses must be in etcd,
// recorded as this compose host's containers, and gone after `rm`.
func TestCompose(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	testproc.Require(t, err == nil, "no docker-compose (Debian package docker-compose)")
	pluginDir := t.TempDir()
	d := dockertest.Start(t, dockertest.Options{PluginDir: pluginDir})
	image := d.ImportBusybox(t)
	dir := t.TempDir()
	env := append(testproc.EnvWithout("DOCKER_"), "DOCKER_HOST="+d.Host(), "DOCKER_CONFIG="+filepath.Join(dir, "cli"), "TEST_IMAGE="+image)
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s\ndockerd log:\n%s", name, strings.Join(args, " "), err, out, d.LogTail(40))
		}
		return string(out)
	}
	run("../scripts/compose/build.sh")
	up := []string{"-f", "../docker-compose.test.yml", "-p", "tdcompose"}
	t.Cleanup(func() {
		cmd := exec.Command(compose, append(up, "down", "-t", "1")...)
		cmd.Env = env
		_ = cmd.Run()
	})

	run(compose, append(up, "up", "-d")...) // etcd and the plugin
	sock := filepath.Join(pluginDir, "talkingdata.sock")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plugin container made no %s within 30s:\n%s", sock, run(compose, append(up, "logs", "ipam")...))
		}
	}
	const lan, ipRange = "198.18.77.0/24", "198.18.77.128/25" // as docker-compose.test-app.yml says
	up = append(up, "-f", "../docker-compose.test-app.yml")
	run(compose, append(up, "up", "-d", "--scale", "app=3")...)

	var want []netip.Addr
	for _, id := range strings.Fields(run(compose, append(up, "ps", "-q", "app")...)) {
		a, err := netip.ParseAddr(strings.TrimSpace(d.MustDocker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "talkingdata-lan").IPAddress}}`, id)))
		if err != nil || !netip.MustParsePrefix(ipRange).Contains(a) {
			t.Fatalf("container %s has %v, want an address in %s", id, a, ipRange)
		}
		want = append(want, a)
	}
	if len(want) != 3 {
		t.Fatalf("%d app containers, want 3", len(want))
	}
	// ipamctl from the plugin's image, against the etcd container.
	addrLs := func() map[netip.Addr]string {
		t.Helper()
		out := run(compose, append(up, "exec", "-T", "ipam", "/ipamctl", "--etcd-endpoints", "http://127.0.0.1:23790", "addr", "ls", lan, "--json")...)
		var used []struct {
			Address netip.Addr
			Kind    string
			Host    string
		}
		if err := json.Unmarshal([]byte(out), &used); err != nil {
			t.Fatalf("ipamctl addr ls: %v\n%s", err, out)
		}
		m := map[netip.Addr]string{}
		for _, u := range used {
			m[u.Address] = u.Kind + "@" + u.Host
		}
		return m
	}
	got := addrLs()
	for _, a := range want {
		if got[a] != "container@compose" {
			t.Errorf("etcd has %s as %q, want a container of host compose; all: %v", a, got[a], got)
		}
	}

	run(compose, append(up, "rm", "-s", "-f", "app")...)
	for a, what := range addrLs() {
		if strings.HasPrefix(what, "container@") {
			t.Errorf("%s still used (%s) after the app containers were removed", a, what)
		}
	}
}
