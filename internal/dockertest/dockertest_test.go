package dockertest

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/talkingdata/ipam/internal/testproc"
)

func TestDaemonEndToEnd(t *testing.T) {
	var d *Daemon
	t.Run("run", func(t *testing.T) {
		plugins := t.TempDir()
		d = Start(t, Options{PluginDir: plugins})
		if !strings.HasPrefix(d.Host(), "unix:///tmp/tdtest-") || !strings.HasPrefix(d.NetNS(), "tdtest-") {
			t.Fatalf("Host() = %q, NetNS() = %q", d.Host(), d.NetNS())
		}

		// What a plugin puts in PluginDir is what dockerd sees in /run/docker/plugins.
		if err := os.WriteFile(filepath.Join(plugins, "probe.spec"), []byte("unix:///nowhere.sock\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := d.inMountNS(t, "cat", "/run/docker/plugins/probe.spec"); got != "unix:///nowhere.sock" {
			t.Fatalf("dockerd sees /run/docker/plugins/probe.spec = %q", got)
		}

		img := d.ImportBusybox(t)
		if again := d.ImportBusybox(t); again != img || img != BusyboxImage {
			t.Fatalf("ImportBusybox = %q then %q", img, again)
		}
		if out := d.MustDocker(t, "run", "--rm", "--network", "none", img, "echo", "hi"); out != "hi" {
			t.Fatalf("echo hi printed %q", out)
		}

		d.MustDocker(t, "network", "create", "--subnet", "198.18.7.0/24",
			"-o", "com.docker.network.bridge.name=tdtbr0", "n1")
		// The bridge lives in the daemon's netns, not on the host.
		ipOut(t, "-n", d.NetNS(), "link", "show", "tdtbr0")
		if _, err := exec.Command("ip", "link", "show", "tdtbr0").CombinedOutput(); err == nil {
			t.Fatal("tdtbr0 appeared on the host")
		}
		for _, name := range []string{"tdt-a", "tdt-b"} {
			// --init: sleep as PID 1 would ignore SIGTERM and make each Restart wait 10s.
			d.MustDocker(t, "run", "-d", "--init", "--name", name, "--network", "n1", img, "sleep", "300")
		}
		addr := netip.MustParseAddr(d.MustDocker(t, "inspect", "-f", "{{.NetworkSettings.Networks.n1.IPAddress}}", "tdt-a"))
		if !netip.MustParsePrefix("198.18.7.0/24").Contains(addr) {
			t.Fatalf("tdt-a got %v, outside n1's subnet", addr)
		}
		if out, err := d.Docker("exec", "tdt-b", "ping", "-c1", "-W2", addr.String()); err != nil || !strings.Contains(out, "1 packets received") {
			t.Fatalf("ping tdt-a from tdt-b: %v\n%s", err, out)
		}

		d.Restart(t)
		d.Restart(t)
		if out := d.MustDocker(t, "network", "ls", "--filter", "name=^n1$", "--format", "{{.Name}}"); out != "n1" {
			t.Fatalf("after restart, network ls shows %q", out)
		}
		if out := d.MustDocker(t, "run", "--rm", "--network", "n1", img, "echo", "back"); out != "back" {
			t.Fatalf("after restart, echo printed %q", out)
		}
		d.MustDocker(t, "start", "tdt-a") // leave a running container for cleanup to deal with
	})
	assertCleanedUp(t, d, true)
}

// A crashed dockerd leaves containerd's shims and the containers running; cleanup must still
// find and kill them.
func TestCleanupAfterDockerdCrash(t *testing.T) {
	var d *Daemon
	var ctr int
	t.Run("crash", func(t *testing.T) {
		d = Start(t, Options{})
		img := d.ImportBusybox(t)
		d.MustDocker(t, "run", "-d", "--network", "none", img, "sleep", "300")
		id := d.MustDocker(t, "ps", "-q")
		ctr, _ = strconv.Atoi(d.MustDocker(t, "inspect", "-f", "{{.State.Pid}}", id))
		if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-d.done
	})
	if d == nil {
		return
	}
	if p, ok := testproc.Procs()[ctr]; ctr == 0 || ok && !p.Exited {
		t.Errorf("container process %d still alive after cleanup", ctr)
	}
	assertCleanedUp(t, d, true)
}

// Several daemons run at once, each with its own netns, so the same bridge name and subnet can
// be used in each; a caller-provided netns is used and left in place.
func TestConcurrentDaemonsAndGivenNetNS(t *testing.T) {
	given := "tdtest-given-" + strconv.Itoa(os.Getpid())
	ipOut(t, "netns", "add", given)
	defer ipOut(t, "netns", "delete", given)

	var ds []*Daemon
	t.Run("run", func(t *testing.T) {
		for _, opts := range []Options{{}, {}, {NetNS: given}} {
			ds = append(ds, Start(t, opts))
		}
		if ds[2].NetNS() != given {
			t.Fatalf("NetNS() = %q, want %q", ds[2].NetNS(), given)
		}
		for _, d := range ds {
			d.MustDocker(t, "network", "create", "--subnet", "198.18.7.0/24",
				"-o", "com.docker.network.bridge.name=tdtbr0", "n1")
			if out := ipOut(t, "-n", d.NetNS(), "-4", "-o", "addr", "show", "tdtbr0"); !strings.Contains(out, "198.18.7.1/24") {
				t.Fatalf("tdtbr0 in %s: %s", d.NetNS(), out)
			}
		}
	})
	for _, d := range ds {
		assertCleanedUp(t, d, d.NetNS() != given)
	}
	if _, err := os.Stat("/run/netns/" + given); err != nil {
		t.Errorf("cleanup removed the caller's netns %s: %v", given, err)
	}
}

// assertCleanedUp checks, after the test that owned d has finished, that nothing of d is left.
func assertCleanedUp(t *testing.T, d *Daemon, netnsGone bool) {
	t.Helper()
	if d == nil {
		return // Start skipped or failed the subtest, which says why
	}
	if pids := d.strays(); len(pids) > 0 {
		t.Errorf("processes of %s left: %v", d.root, pids)
	}
	if _, err := os.Stat(d.root); !os.IsNotExist(err) {
		t.Errorf("root %s left (stat: %v)", d.root, err)
	}
	if dirs := d.cgroupDirs(); len(dirs) > 0 {
		t.Errorf("cgroups left: %v", dirs)
	}
	if _, err := os.Stat("/run/netns/" + d.NetNS()); netnsGone && !os.IsNotExist(err) {
		t.Errorf("netns %s left (stat: %v)", d.NetNS(), err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), d.root) {
		t.Errorf("mounts under %s left", d.root)
	}
}

// inMountNS runs a host command inside dockerd's mount namespace.
func (d *Daemon) inMountNS(t *testing.T, args ...string) string {
	t.Helper()
	pid := strconv.Itoa(d.cmd.Process.Pid)
	out, err := exec.Command(d.tools.nsenter, append([]string{"-t", pid, "-m", "--"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter -t %s -m %v: %v: %s", pid, args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
