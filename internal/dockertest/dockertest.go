// Package dockertest starts private, real dockerd instances for end-to-end tests.
//
// Each Daemon runs in its own network namespace and its own private mount namespace, with its
// own data root, exec root, socket, managed containerd and cgroup parent, so several can run at
// once (also from parallel test binaries) without seeing each other or the host's Docker:
//
//	unshare -m --propagation private -- sh -c '
//	    mount tmpfs on /run                      # hides the host's /run/docker, /run/containerd
//	    bind PluginDir on /run/docker/plugins    # where dockerd looks for NAME.sock
//	    exec sleep infinity'                     # holds the mount namespace between starts
//	nsenter --mount=/proc/SLEEP/ns/mnt --net=/proc/self/fd/3 dockerd …   # fd 3 = /run/netns/NAME
//
// `ip netns exec` is not used for dockerd because it remounts /sys, which hides the cgroup
// mounts runc needs. A plugin under test runs in the test's own namespaces and puts its socket in
// Options.PluginDir; dockerd reaches it through the bind mount.
package dockertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
	cliTimeout   = 2 * time.Minute // a hung plugin hangs dockerd; don't hang the test binary too
	logTailLines = 40
)

// Options configures a Daemon.
type Options struct {
	// PluginDir is a host directory bind-mounted over /run/docker/plugins inside dockerd's
	// private mount namespace, so a plugin process running in the test's own namespace can put
	// NAME.sock there and dockerd finds it. Empty: a fresh directory under the daemon's root.
	PluginDir string
	// NetNS is an existing netns name (/run/netns/NAME) to run dockerd in. Empty: a fresh one
	// named "tdtest-<random>" is created (with lo up) and deleted on cleanup.
	NetNS string
	// Engine is the dockerd build to run and the CLI to talk to it (LookupEngine,
	// MatrixEngines). The zero value is the system's Debian dockerd 20.10 and its CLI.
	Engine Engine
	// Args are dockerd flags added after the engine's, such as a TLS tcp:// listener
	// (reach it with Expose).
	Args []string
}

// Daemon is one private dockerd.
type Daemon struct {
	opts     Options
	root     string // /tmp/tdtest-N: short, because unix socket paths are limited to 108 bytes
	token    string // "tdtest-N": names the netns and the cgroup parent
	netns    string
	ownNetNS bool
	driver   string // storage driver, fixed for the life of the data root
	tools    tools
	engine   Engine // opts.Engine, or the system's when that is zero

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when dockerd has exited
	keeper  *exec.Cmd     // holds dockerd's mount namespace between starts (see mountNS)
	imgOnce sync.Once
	img     string
	imgErr  error
}

// Start starts a dockerd and waits until it answers `docker version`. Everything it creates is
// removed when the test ends, also when the test fails midway.
func Start(t testing.TB, opts Options) *Daemon {
	t.Helper()
	d := &Daemon{opts: opts, tools: findTools(t), engine: opts.Engine}
	if d.engine.IsZero() {
		d.engine = LookupEngine(t, SystemEngine().Name)
	}
	root, err := os.MkdirTemp("/tmp", "tdtest-")
	if err != nil {
		t.Fatal(err)
	}
	d.root, d.token = root, filepath.Base(root)
	t.Cleanup(func() { d.cleanup(t) })

	for _, dir := range []string{"data", "exec", "pl", "cli"} {
		if err := os.Mkdir(filepath.Join(root, dir), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if d.opts.PluginDir == "" {
		d.opts.PluginDir = filepath.Join(root, "plugins")
		if err := os.Mkdir(d.opts.PluginDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An empty config file, so a host /etc/docker/daemon.json cannot change the test daemon.
	if err := os.WriteFile(filepath.Join(root, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.netns = opts.NetNS
	if d.netns == "" {
		d.netns = d.token
		if out, err := exec.Command(d.tools.ip, "netns", "add", d.netns).CombinedOutput(); err != nil {
			t.Fatalf("dockertest: ip netns add %s: %v: %s", d.netns, err, out)
		}
		d.ownNetNS = true
		if out, err := exec.Command(d.tools.ip, "-n", d.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("dockertest: lo up in %s: %v: %s", d.netns, err, out)
		}
	}
	d.driver = StorageDriver()
	d.start(t)
	return d
}

// Host is the -H / DOCKER_HOST value for this daemon.
func (d *Daemon) Host() string { return "unix://" + filepath.Join(d.root, "docker.sock") }

// Engine is the engine this daemon runs: Options.Engine, or the system's (Name "20.10") when
// that was zero.
func (d *Daemon) Engine() Engine { return d.engine }

// NetNS is the name of the network namespace dockerd runs in (see `ip netns`).
func (d *Daemon) NetNS() string { return d.netns }

// Docker runs the docker CLI against this daemon and returns its stdout with surrounding
// whitespace trimmed. The error includes the CLI's stderr. Each call is bounded by 2 minutes.
func (d *Daemon) Docker(args ...string) (string, error) { return d.docker(nil, args...) }

// MustDocker is Docker, failing the test on error.
func (d *Daemon) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.Docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *Daemon) docker(stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.engine.Docker, append([]string{"-H", d.Host()}, args...)...)
	// Drop DOCKER_HOST/DOCKER_CONTEXT/…, and keep the CLI away from the user's ~/.docker.
	cmd.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_CONFIG="+filepath.Join(d.root, "cli"))
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", cliTimeout)
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Stop sends dockerd SIGTERM (it stops its containers and its containerd) and waits; after 60s,
// or if anything is left over, it kills dockerd's process group, containerd, the shims and the
// container processes. Stopping a stopped daemon does nothing.
func (d *Daemon) Stop(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil && d.keeper == nil {
		return
	}
	if d.cmd != nil {
		if pid := d.cmd.Process.Pid; testproc.Terminate(pid, d.done, stopTimeout) {
			t.Logf("dockertest: dockerd (pid %d) still running %v after SIGTERM; killed it\n%s",
				pid, stopTimeout, d.LogTail(logTailLines))
		}
		d.cmd = nil
	}
	d.dropMountNS()
	if n := d.killStrays(); n > 0 {
		t.Logf("dockertest: killed %d leftover processes of %s", n, d.root)
	}
}

// Restart stops dockerd and starts it again with the same roots in the same network namespace.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	d.Stop(t)
	d.start(t)
}

// LogTail returns the last n lines of dockerd's log (all starts appended).
func (d *Daemon) LogTail(n int) string {
	return testproc.Tail(filepath.Join(d.root, "dockerd.log"), n)
}

// startScript runs inside the new private mount namespace; $1 = root, $2 = PluginDir, then the
// command. PluginDir is bound to root/pl first because it may itself live under /run.
const startScript = `set -e
mount --bind "$2" "$1/pl"
mount -t tmpfs -o mode=0755 tdtest-run /run
mkdir -p /run/docker/plugins
mount --bind "$1/pl" /run/docker/plugins
for d in /etc/docker/plugins /usr/lib/docker/plugins; do
	if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 tdtest-empty "$d"; fi
done
shift 2
exec "$@"
`

func (d *Daemon) start(t testing.TB) {
	t.Helper()
	keeper := d.mountNS(t)
	nsf, err := os.Open(filepath.Join("/run/netns", d.netns))
	if err != nil {
		t.Fatalf("dockertest: netns %s: %v", d.netns, err)
	}
	defer nsf.Close()
	logf, err := os.OpenFile(filepath.Join(d.root, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor

	args := []string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", keeper), "--net=/proc/self/fd/3",
		d.engine.Dockerd,
		"--config-file", filepath.Join(d.root, "daemon.json"),
		"--data-root", filepath.Join(d.root, "data"),
		"--exec-root", filepath.Join(d.root, "exec"),
		"--pidfile", filepath.Join(d.root, "docker.pid"),
		"--host", d.Host(),
		"--storage-driver", d.driver,
		"--bridge=none",    // no docker0: tests create the networks they need
		"--iptables=false", // keep dockerd's hands off netfilter; nothing leaves the netns anyway
		"--ip6tables=false",
		// Containers get their own cgroup parent, so cleanup can find their processes.
		"--cgroup-parent", "/" + d.token,
	}
	args = append(append(args, d.engine.Args...), d.opts.Args...)
	cmd := exec.Command(d.tools.nsenter, args...)
	cmd.ExtraFiles = []*os.File{nsf} // fd 3
	cmd.Dir = d.root
	cmd.Stdout, cmd.Stderr = logf, logf
	// dockerd finds containerd, runc and docker-init on PATH: prefer the engine's own, then
	// the ones beside dockerd.
	cmd.Env = append(testproc.EnvWithout("PATH="), "PATH="+d.engine.DockerdPath())
	// Own process group for Stop; Pdeathsig so a test binary that dies without running its
	// cleanups (e.g. a -timeout panic) takes dockerd and its containerd with it.
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

// mountNS returns the pid of a process (`sleep`) whose private mount namespace startScript has
// set up, starting it when there is none. dockerd runs in that namespace, and it outlives
// dockerd: a dockerd started again after StopDaemonOnly finds what the previous one mounted
// (containers' network namespaces under /run/docker/netns, containerd's shim sockets), as on a
// real host, which live-restore needs. Stop ends it, so that a Restart starts afresh; only
// StopDaemonOnly leaves one, so one that has died since fails the test (StartAgain in a fresh
// namespace would fail live-restore checks confusingly).
func (d *Daemon) mountNS(t testing.TB) int {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keeper != nil {
		if pid := d.keeper.Process.Pid; testproc.Alive(pid) {
			return pid
		}
		t.Fatalf("dockertest: the mount namespace of the stopped dockerd is gone (its keeper, pid %d, exited)", d.keeper.Process.Pid)
	}
	sleep := testproc.LookTool("sleep")
	cmd := exec.Command(d.tools.unshare, "-m", "--propagation", "private", "--", "/bin/sh", "-c", startScript, "sh",
		d.root, d.opts.PluginDir, sleep, "infinity")
	cmd.Dir = d.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		t.Fatalf("dockertest: mount namespace for dockerd: %v", err)
	}
	d.keeper = cmd
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		// The script ends by exec'ing sleep: then the mounts are in place.
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == filepath.Base(sleep) {
			return pid
		}
		if !testproc.Alive(pid) || time.Now().After(deadline) {
			t.Fatalf("dockertest: the mount namespace for dockerd was not set up")
		}
	}
}

// dropMountNS ends the process holding dockerd's mount namespace, if any. Call it with d.mu held.
func (d *Daemon) dropMountNS() {
	if d.keeper == nil {
		return
	}
	_ = d.keeper.Process.Kill()
	_ = d.keeper.Wait()
	d.keeper = nil
}

func (d *Daemon) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-exited:
			return errors.New("dockerd exited during startup")
		default:
		}
		if _, err := os.Stat(filepath.Join(d.root, "docker.sock")); err == nil {
			if _, err := d.Docker("version", "--format", "{{.Server.Version}}"); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd not answering after %v", readyTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cleanup runs at the end of the test: stop, then remove the cgroups, netns and directories.
func (d *Daemon) cleanup(t testing.TB) {
	if t.Failed() {
		t.Logf("dockerd log tail (%s):\n%s", d.root, d.LogTail(logTailLines))
	}
	d.Stop(t)
	// Processes from a failed start (d.cmd never set) or a crashed dockerd.
	d.killStrays()
	if err := d.removeCgroups(); err != nil {
		t.Errorf("dockertest: %v", err)
	}
	if d.ownNetNS {
		if out, err := exec.Command(d.tools.ip, "netns", "delete", d.netns).CombinedOutput(); err != nil {
			t.Errorf("dockertest: ip netns delete %s: %v: %s", d.netns, err, out)
		}
	}
	if err := d.removeRoot(); err != nil {
		t.Errorf("dockertest: %v", err)
	}
}
