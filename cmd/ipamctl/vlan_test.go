package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/vm"
)

// TestVLAN runs `ipamctl vlan` in a throwaway netns, without etcd: the
// wiring of flags, dry run, --json and --persist. bridgesetup's tests
// prove the steps, the rollback and the tagged traffic.
func TestVLAN(t *testing.T) {
	ip, run, ok := cliNetns(t, "vlan")

	root := t.TempDir()
	want := "create VLAN link eth0.8 (id 8 on eth0)\nwrite " + filepath.Join(root, "etc/network/interfaces.d/eth0.8") + "\n(dry run: nothing changed)\n"
	if got := ok("vlan", "setup", "--nic", "eth0", "--id", "8", "--dry-run", "--persist", "ifupdown", "--persist-dir", root); got != want {
		t.Errorf("setup --dry-run:\n%s\nwant\n%s", got, want)
	}
	if ip("link", "show", "eth0.8") == nil {
		t.Fatal("--dry-run created eth0.8")
	}
	if _, err := os.Stat(filepath.Join(root, "etc")); err == nil {
		t.Fatal("--dry-run wrote files")
	}
	if got := ok("vlan", "teardown", "--nic", "eth0", "--id", "8"); got != "nothing to do: no link eth0.8\n" {
		t.Errorf("teardown without the link: %q", got)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vlan", "setup", "--nic", "eth0"}, "missing --nic or --id"},
		{[]string{"vlan", "setup", "--id", "8"}, "missing --nic or --id"},
		{[]string{"vlan", "setup", "--nic", "eth0", "--id", "5000"}, "invalid VLAN id 5000: want 1-4094"},
		{[]string{"vlan", "setup", "--nic", "eth0", "--id", "8", "--persist", "netplan"}, `invalid --persist "netplan"`},
		{[]string{"vlan", "setup", "--nic", "eth9", "--id", "8"}, "vlan setup: bridgesetup: NIC eth9 not found"},
		{[]string{"vlan", "teardown", "--nic", "eth0", "--id", "8", "extra"}, `unexpected argument "extra"`},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ipamctl %s: %v, want an error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}

	// The rest makes the link: the kernel must be able to.
	_, err := run("vlan", "setup", "--nic", "eth0", "--id", "8", "--name", "probe")
	unsupported := err != nil && strings.Contains(err.Error(), "operation not supported")
	if unsupported && !strings.Contains(err.Error(), "this kernel has no 802.1Q support (modprobe 8021q)") {
		t.Errorf("vlan setup on a kernel without 802.1Q does not say so: %v", err)
	}
	if vm.RunUnless(t, !unsupported, "CONFIG_VLAN_8021Q (modprobe 8021q)") {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	ok("vlan", "teardown", "--nic", "eth0", "--id", "8", "--name", "probe")

	var res vlanJSON
	out := ok("vlan", "setup", "--nic", "eth0", "--id", "8", "--persist", "systemd-networkd", "--persist-dir", root, "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.Name != "eth0.8" || len(res.Steps) != 1 || res.Steps[0].Name != "createVLAN" || len(res.Files) != 3 || !res.Files[0].Written {
		t.Errorf("setup --json: %s", out)
	}
	if err := ip("link", "show", "eth0.8"); err != nil {
		t.Fatal(err)
	}
	if got := ok("vlan", "setup", "--nic", "eth0", "--id", "8"); got != "nothing to do: eth0.8 is VLAN 8 of eth0, up\n" {
		t.Errorf("second setup: %q", got)
	}
	if got := ok("vlan", "teardown", "--nic", "eth0", "--id", "8"); got != "delete VLAN link eth0.8 (id 8 on eth0)\n" {
		t.Errorf("teardown: %q", got)
	}
	if ip("link", "show", "eth0.8") == nil {
		t.Error("teardown left eth0.8")
	}
}
