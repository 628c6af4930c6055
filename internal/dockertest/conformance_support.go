package dockertest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
		if err != nil || !alive(pid) {
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

// alive reports whether pid is a process that has not exited (a zombie has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state …: comm may hold spaces, the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// StartAgain starts dockerd after StopDaemonOnly, with the same roots in the same namespaces.
//
// Unlike Start and Restart, every StartAgain of a daemon runs dockerd in one mount namespace
// that outlives it, held by a keeper process (set up as Start's startScript does): on a real
// host a restarted dockerd finds what the previous one mounted, and live-restore needs that.
// Containers' network namespaces are bind-mounted under /run/docker/netns and containerd's
// shims keep their sockets in /run/containerd/s; in a fresh mount namespace both would be
// gone, and dockerd would release the addresses of containers it restored alive.
func (d *Daemon) StartAgain(t testing.TB) {
	t.Helper()
	keeper := d.mountKeeper(t)
	nsf, err := os.Open(filepath.Join("/run/netns", d.netns))
	if err != nil {
		t.Fatalf("dockertest: netns %s: %v", d.netns, err)
	}
	defer nsf.Close()
	logf, err := os.OpenFile(filepath.Join(d.root, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// As start's command line, in the keeper's mount namespace.
	args := []string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", keeper), "--net=/proc/self/fd/3",
		d.engine.Dockerd,
		"--config-file", filepath.Join(d.root, "daemon.json"),
		"--data-root", filepath.Join(d.root, "data"),
		"--exec-root", filepath.Join(d.root, "exec"),
		"--pidfile", filepath.Join(d.root, "docker.pid"),
		"--host", d.Host(),
		"--storage-driver", d.driver,
		"--bridge=none",
		"--iptables=false",
		"--ip6tables=false",
		"--cgroup-parent", "/" + d.token,
	}
	args = append(args, d.engine.Args...)
	cmd := exec.Command(d.tools.nsenter, args...)
	cmd.ExtraFiles = []*os.File{nsf}
	cmd.Dir = d.root
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(testproc.EnvWithout("PATH="), "PATH="+d.engine.pathFor())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		t.Fatalf("dockertest: start dockerd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	d.mu.Lock()
	d.cmd, d.done = cmd, done
	d.mu.Unlock()
	if err := d.waitReady(done); err != nil {
		t.Fatalf("dockertest: %v\ndockerd log tail (%s):\n%s", err, d.root, d.LogTail(logTailLines))
	}
}

var (
	keepersMu sync.Mutex
	keepers   = map[*Daemon]int{} // daemon → pid of the process holding its StartAgain mount namespace
)

// mountKeeper returns the pid of a process (`sleep`) whose private mount namespace is set up
// as startScript sets up dockerd's; it is started on first use and killed when the test ends
// (its command line names the root, so Stop's sweep kills it too).
func (d *Daemon) mountKeeper(t testing.TB) int {
	t.Helper()
	keepersMu.Lock()
	defer keepersMu.Unlock()
	if pid, ok := keepers[d]; ok && alive(pid) {
		return pid
	}
	sleep := lookTool("sleep")
	cmd := exec.Command(d.tools.unshare, "-m", "--propagation", "private", "--", "/bin/sh", "-c", startScript, "sh",
		d.root, d.opts.PluginDir, sleep, "infinity")
	cmd.Dir = d.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		t.Fatalf("dockertest: mount namespace keeper: %v", err)
	}
	go cmd.Wait()
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		// The script ends by exec'ing sleep: then the mounts are in place.
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == filepath.Base(sleep) {
			break
		}
		if !alive(pid) || time.Now().After(deadline) {
			t.Fatalf("dockertest: mount namespace keeper did not set up its mounts")
		}
	}
	keepers[d] = pid
	return pid
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
