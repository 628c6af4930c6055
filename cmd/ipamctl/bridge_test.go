package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/talkingdata/ipam/internal/testproc"
)

// TestBridge runs `ipamctl bridge` in a throwaway netns whose veth eth0
// stands in for the NIC, with no etcd anywhere: the commands must not need
// it. bridgesetup's own tests prove the rollback and the connectivity;
// this one proves the wiring: flags, dry run, --json, --persist.
func TestBridge(t *testing.T) {
	ip, run, ok := cliNetns(t, "bridge")
	plan := "create bridge br0 (mac 02:00:c6:12:00:0b, mtu 1500)\n" +
		"copy address 198.18.0.11/24 eth0 → br0\n" +
		"enslave eth0 to br0\n" +
		"move route default via 198.18.0.1 eth0 → br0\n" +
		"remove address 198.18.0.11/24 from eth0\n"
	if got := ok("bridge", "setup", "--nic", "eth0", "--dry-run"); got != plan+"(dry run: nothing changed)\n" {
		t.Errorf("setup --dry-run:\n%s\nwant\n%s", got, plan)
	}
	if ip("link", "show", "br0") == nil {
		t.Fatal("--dry-run created br0")
	}

	root := t.TempDir()
	var res bridgeJSON
	out := ok("bridge", "setup", "--persist", "systemd-networkd", "--persist-dir", root, "--json", "--nic", "eth0")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(res.Steps) != 5 || res.Steps[0].Name != "createBridge" || len(res.Files) != 3 || !res.Files[2].Written {
		t.Errorf("setup --json: %s", out)
	}
	if err := ip("link", "show", "br0"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "etc/systemd/network/10-br0.network"))
	if err != nil || !strings.Contains(string(b), "Address=198.18.0.11/24\nGateway=198.18.0.1\n") {
		t.Errorf("10-br0.network: %v\n%s", err, b)
	}
	if got := ok("bridge", "setup", "--nic", "eth0"); got != "nothing to do: br0 already bridges eth0\n" {
		t.Errorf("second setup: %q", got)
	}

	if got := ok("bridge", "teardown", "--nic", "eth0", "--dry-run"); !strings.HasSuffix(got, "delete bridge br0\n(dry run: nothing changed)\n") {
		t.Errorf("teardown --dry-run:\n%s", got)
	}
	ok("bridge", "teardown", "--nic", "eth0")
	if ip("link", "show", "br0") == nil {
		t.Error("teardown left br0")
	}
	if got := ok("bridge", "teardown", "--nic", "eth0"); got != "nothing to do: no bridge br0\n" {
		t.Errorf("second teardown: %q", got)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bridge", "setup"}, "missing --nic"},
		{[]string{"bridge", "setup", "--nic", "eth0", "--persist", "netplan"}, `invalid --persist "netplan"`},
		{[]string{"bridge", "setup", "--nic", "eth9"}, "bridge setup: bridgesetup: NIC eth9 not found"},
		{[]string{"bridge", "teardown", "--nic", "eth0", "extra"}, `unexpected argument "extra"`},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ipamctl %s: %v, want an error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// cliNetns makes a throwaway netns whose veth eth0 (198.18.0.11/24,
// default via 198.18.0.1) stands in for the NIC, and returns functions
// running ip there, and ipamctl (with its error, or failing the test).
func cliNetns(t *testing.T, what string) (ip func(...string) error, run func(...string) (string, error), ok func(...string) string) {
	t.Helper()
	_, err := exec.LookPath("ip")
	testproc.Require(t, os.Geteuid() == 0 && err == nil, "the "+what+" command test needs root and ip")
	ns := fmt.Sprintf("ipamctl-%s-%d", what, os.Getpid())
	ip = func(args ...string) error {
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", ns, err, out)
		}
	})
	for _, args := range [][]string{
		{"link", "add", "eth0", "address", "02:00:c6:12:00:0b", "type", "veth", "peer", "name", "peer0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "peer0", "up"},
		{"addr", "add", "198.18.0.11/24", "dev", "eth0"},
		{"route", "add", "default", "via", "198.18.0.1", "dev", "eth0"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	run = func(args ...string) (string, error) {
		t.Helper()
		var out, errOut bytes.Buffer
		var err error
		inNetns(t, "/run/netns/"+ns, func() {
			app := newApp()
			app.Writer, app.ErrWriter = &out, &errOut
			err = app.Run(append([]string{"ipamctl"}, args...))
		})
		return out.String(), err
	}
	ok = func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("ipamctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	return ip, run, ok
}

// inNetns runs fn on this goroutine's thread switched into the netns at
// path. If switching back fails, the thread stays locked and dies with
// the goroutine rather than serve others in the wrong namespace.
func inNetns(t *testing.T, path string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the original netns: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}
