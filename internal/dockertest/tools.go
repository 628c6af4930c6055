package dockertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/talkingdata/ipam/internal/testproc"
)

// tools are the absolute paths of the host programs the harness runs; dockerd and its CLI come
// with the Engine.
type tools struct {
	unshare, nsenter, ip string
}

// findTools skips (or, in CI, fails) the test when a namespace tool is missing.
func findTools(t testing.TB) tools {
	t.Helper()
	testproc.Require(t, os.Geteuid() == 0, "dockertest: needs root (namespaces, mounts, dockerd)")
	var tl tools
	for _, x := range []struct {
		dst  *string
		name string
		pkg  string
	}{
		{&tl.unshare, "unshare", "util-linux"},
		{&tl.nsenter, "nsenter", "util-linux"},
		{&tl.ip, "ip", "iproute2"},
	} {
		*x.dst = testproc.LookTool(x.name)
		testproc.Require(t, *x.dst != "", "dockertest: no "+x.name+" (Debian package "+x.pkg+")")
	}
	return tl
}

var (
	driverOnce sync.Once
	driver     string
)

// StorageDriver picks overlay2 when the filesystem under /tmp (where data roots live) can host
// an overlay mount, else vfs (slow, copies every layer, but works anywhere).
// TDTEST_STORAGE_DRIVER overrides the choice.
func StorageDriver() string {
	driverOnce.Do(func() {
		if driver = os.Getenv("TDTEST_STORAGE_DRIVER"); driver != "" {
			return
		}
		driver = "vfs"
		if overlayWorks() {
			driver = "overlay2"
		}
	})
	return driver
}

// overlayWorks mounts a small overlay in a throwaway private mount namespace: the mount
// disappears with the namespace when the probe exits.
func overlayWorks() bool {
	dir, err := os.MkdirTemp("/tmp", "tdtest-ovl-")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir)
	for _, sub := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return false
		}
	}
	opts := "lowerdir=" + dir + "/lower,upperdir=" + dir + "/upper,workdir=" + dir + "/work"
	return exec.Command(testproc.LookTool("unshare"), "-m", "--propagation", "private",
		"mount", "-t", "overlay", "overlay", "-o", opts, dir+"/merged").Run() == nil
}
