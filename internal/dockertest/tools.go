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
		*x.dst = LookTool(x.name)
		testproc.Require(t, *x.dst != "", "dockertest: no "+x.name+" (Debian package "+x.pkg+")")
	}
	return tl
}

// LookTool finds a program on PATH or in the sbin directories a non-login root PATH may lack,
// or returns "". For docker it prefers Debian's /usr/bin/docker, which matches Debian's dockerd,
// over a newer client that may come first on PATH.
func LookTool(name string) string {
	if name == "docker" {
		if _, err := os.Stat("/usr/bin/docker"); err == nil {
			return "/usr/bin/docker"
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

var (
	driverOnce sync.Once
	driver     string
)

// storageDriver picks overlay2 when the filesystem under /tmp (where data roots live) can host
// an overlay mount, else vfs (slow, copies every layer, but works anywhere).
// TDTEST_STORAGE_DRIVER overrides the choice.
func storageDriver() string {
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
	return exec.Command(LookTool("unshare"), "-m", "--propagation", "private",
		"mount", "-t", "overlay", "overlay", "-o", opts, dir+"/merged").Run() == nil
}
