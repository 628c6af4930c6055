package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/testproc"
)

// TestMakeInstall stages `make install` into a DESTDIR and checks the tree, then has
// systemd-analyze verify the installed units. Their ExecStart paths name the real root, where
// nothing is installed, so the verified copies point into DESTDIR instead.
func TestMakeInstall(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	testproc.Require(t, err == nil, "no systemd-analyze (Debian package systemd)")
	dest, fake := t.TempDir(), t.TempDir()
	// A systemctl that leaves a mark: with DESTDIR, make install must not touch systemd.
	marker := filepath.Join(fake, "called")
	if err := os.WriteFile(filepath.Join(fake, "systemctl"), []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	const prefix = "/opt/td"
	cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX="+prefix, "BIN="+filepath.Join(t.TempDir(), "bin"))
	cmd.Env = append(testproc.EnvWithout("PATH="), "PATH="+fake+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("make install with DESTDIR ran systemctl")
	}
	for path, mode := range map[string]os.FileMode{
		prefix + "/bin/talkingdata-ipam":                 0o755,
		prefix + "/bin/ipamctl":                          0o755,
		"/etc/systemd/system/talkingdata-ipam.service":   0o644,
		"/etc/systemd/system/talkingdata-bridge.service": 0o644,
		"/etc/default/talkingdata-ipam":                  0o600, // may hold IPAM_ETCD_PASSWORD
		"/etc/talkingdata-ipam":                          0o700 | os.ModeDir,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil || fi.Mode()&(os.ModeDir|os.ModePerm) != mode {
			t.Errorf("%s: %v, mode %v; want mode %v", path, err, fi.Mode(), mode)
		}
	}

	verify := t.TempDir()
	var units []string
	for _, u := range []string{"talkingdata-ipam.service", "talkingdata-bridge.service"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", u))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "ExecStart="+prefix+"/bin/") {
			t.Errorf("%s does not run the binaries under PREFIX %s:\n%s", u, prefix, b)
		}
		staged := strings.ReplaceAll(string(b), "="+prefix+"/bin/", "="+dest+prefix+"/bin/")
		units = append(units, filepath.Join(verify, u))
		if err := os.WriteFile(units[len(units)-1], []byte(staged), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
