package dockertest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// SetDaemonConfig replaces the daemon's config file (the --config-file every start passes) with
// cfg, e.g. {"live-restore": true}. It takes effect at the next start.
func (d *Daemon) SetDaemonConfig(t testing.TB, cfg map[string]any) {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.root, "daemon.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// StopDaemonOnly sends dockerd alone sig and waits for it to exit, leaving its containerd, the
// shims and the containers to what dockerd itself does: SIGTERM is a clean shutdown (which
// with live-restore leaves containers running), SIGKILL a crash. Unlike Stop, nothing left
// over is killed. Start it again with StartAgain.
func (d *Daemon) StopDaemonOnly(t testing.TB, sig syscall.Signal) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return
	}
	if err := syscall.Kill(d.cmd.Process.Pid, sig); err != nil {
		t.Fatalf("dockertest: signal %v to dockerd: %v", sig, err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		t.Fatalf("dockertest: dockerd still running %v after %v\n%s", stopTimeout, sig, d.LogTail(logTailLines))
	}
	d.cmd = nil
	d.forgetDeadContainerd(t)
}

// forgetDeadContainerd removes the pid file of dockerd's managed containerd when that process
// is gone or a zombie. A crashed dockerd takes its containerd with it (Pdeathsig), and on a host
// whose init reaps orphans the pid is gone; where pid 1 does not reap (some sandboxes), the
// zombie still answers kill(pid, 0) and the next dockerd would wait for its socket forever.
func (d *Daemon) forgetDeadContainerd(t testing.TB) {
	t.Helper()
	pidfile := filepath.Join(d.root, "exec", "containerd", "containerd.pid")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b, err := os.ReadFile(pidfile)
		if err != nil {
			return // none: dockerd starts a new containerd
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !testproc.Alive(pid) {
			if err := os.Remove(pidfile); err != nil && !os.IsNotExist(err) {
				t.Fatalf("dockertest: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			return // still running: the next dockerd takes it over
		}
	}
}

// StartAgain starts dockerd after StopDaemonOnly, with the same roots in the same network and
// mount namespaces, so that it finds what the previous dockerd left running (live-restore). It
// fails the test if that mount namespace is gone.
func (d *Daemon) StartAgain(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	stopped := d.cmd == nil && d.keeper != nil
	d.mu.Unlock()
	if !stopped {
		t.Fatal("dockertest: StartAgain without StopDaemonOnly before it")
	}
	d.start(t)
}

// Reload sends dockerd SIGHUP: it reads its config file again (live-restore, among others).
func (d *Daemon) Reload(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		t.Fatal("dockertest: Reload of a stopped dockerd")
	}
	if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatalf("dockertest: SIGHUP to dockerd: %v", err)
	}
}
