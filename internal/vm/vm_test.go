package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRun boots the VM: Debian's kernel runs the command as root with the host's programs, makes
// the links this machine's kernel may lack (their modules load on demand), and its writes to /
// stay in the VM; output and exit status come back.
func TestRun(t *testing.T) {
	_, modules, err := findKernel()
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join("/", "vm-test-"+filepath.Base(t.TempDir()))
	out, status, err := Run(context.Background(), Command{
		Dir: "/",
		Args: []string{"sh", "-c", `uname -r
ip link add p0 type veth peer name p1 &&
ip link add link p0 name p0.8 type vlan id 8 &&
ip link add link p0 name iv type ipvlan mode l2 &&
ip -br link show p0.8 && touch ` + marker + ` && echo to stderr >&2; exit 3`},
		Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if status != 3 {
		t.Errorf("exit status %d, want 3", status)
	}
	for _, want := range []string{filepath.Base(modules) + "\n", "p0.8@p0", "to stderr\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		os.Remove(marker)
		t.Errorf("the VM's write reached the host: %v", err)
	}
}

// TestRunTimeout: qemu killed before the command finishes is an error, not a status.
func TestRunTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, status, err := Run(ctx, Command{Dir: "/", Args: []string{"sleep", "600"}}); err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Errorf("Run = status %d, %v; want an error", status, err)
	}
}

// TestRunUnless runs itself in the VM as if this kernel lacked an option; in there, it finds
// Debian's kernel.
func TestRunUnless(t *testing.T) {
	if RunUnless(t, os.Getenv(EnvInside) != "", "a VM") {
		return
	}
	_, modules, err := findKernel()
	if err != nil {
		t.Fatal(err)
	}
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(release)), filepath.Base(modules); got != want {
		t.Fatalf("running on kernel %s, want the VM's %s", got, want)
	}
}

func TestRunPattern(t *testing.T) {
	for name, want := range map[string]string{
		"TestVLAN": "^TestVLAN$",
		"TestMacvlanAcrossHosts/ipvlan_l2_on_VLAN_8": "^TestMacvlanAcrossHosts$/^ipvlan_l2_on_VLAN_8$",
		"TestX/a.b(c)": `^TestX$/^a\.b\(c\)$`,
	} {
		if got := runPattern(name); got != want {
			t.Errorf("runPattern(%q) = %q, want %q", name, got, want)
		}
	}
}
