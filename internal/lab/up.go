package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// dockerdScript runs inside dockerd's new private mount namespace: $1 = plugin dir, $2 = tmpfs
// name, then dockerd's command. The tmpfs on /run hides the machine's /run/docker and
// /run/containerd.
const dockerdScript = `set -e
mount -t tmpfs -o mode=0755 "$2" /run
mkdir -p /run/docker/plugins
mount --bind "$1" /run/docker/plugins
for d in /etc/docker /usr/lib/docker/plugins; do
	if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 "$2" "$d"; fi
done
shift 2
exec "$@"`

// daemonPath is the PATH of the plugins (and of etcd): the system's.
const daemonPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// up builds the lab, reporting progress to w. What it made stays when it fails: down removes
// it, also when up was killed midway.
func (l *Lab) up(w io.Writer) error {
	t0 := time.Now()
	say := func(format string, a ...any) {
		fmt.Fprintf(w, "lab %s: %s (%.2fs)\n", l.ID, fmt.Sprintf(format, a...), time.Since(t0).Seconds())
	}
	if nsf, _ := filepath.Glob("/run/netns/tdlab-" + l.ID + "-*"); len(nsf) > 0 {
		return fmt.Errorf("lab %s exists; remove it with: scripts/lab.sh down %s", l.ID, l.ID)
	}
	if err := os.Mkdir(l.Dir, 0o755); err != nil {
		return fmt.Errorf("lab %s exists? %w", l.ID, err)
	}
	if err := l.writeOwner(); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(l.Dir, "cli"), 0o700); err != nil { // DOCKER_CONFIG
		return err
	}
	say("%s", l.Dir)
	build := l.build()
	// The env file first: status, exec and down work on a half-built lab too.
	if err := l.writeEnv(); err != nil {
		return err
	}
	if err := l.network(); err != nil {
		return err
	}
	say("network ready")

	etcd := l.etcd()
	for i := range etcd.Members {
		if err := etcd.Spawn(i); err != nil {
			return err
		}
		if err := writePid(filepath.Join(etcd.Members[i].Dir, "etcd.pid"), etcd.Proc(i).Pid()); err != nil {
			return err
		}
	}
	for i := range etcd.Members {
		if err := etcd.WaitHealthy(context.Background(), i); err != nil {
			return err
		}
	}
	say("etcd cluster healthy")

	if err := <-build; err != nil {
		return fmt.Errorf("building the binaries: %w\n%s", err, testproc.Tail(filepath.Join(l.Dir, "build.log"), logTailLines))
	}
	if err := l.pathDirs(); err != nil {
		return err
	}
	for k := 1; k <= l.hosts; k++ {
		if _, err := l.spawnPlugin(k); err != nil {
			return err
		}
	}
	if err := l.waitPlugins(); err != nil {
		return err
	}
	say("plugins serving")

	driver := os.Getenv("TDLAB_STORAGE_DRIVER")
	if driver == "" {
		driver = dockertest.StorageDriver()
	}
	for k := 1; k <= l.hosts; k++ {
		if err := l.startDockerd(k, driver); err != nil {
			return err
		}
	}
	if err := l.waitDockerd(); err != nil {
		return err
	}
	say("dockerd answering on %d hosts, storage driver %s", l.hosts, driver)
	if err := l.importImage(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(l.Dir, "ready"), nil, 0o644); err != nil {
		return err
	}
	say("up")
	return nil
}

// writeOwner records who may be gone before prune removes the lab (pid and start time, so a
// later process with the same pid does not count), and the pid of an up of its own, which down
// kills along with the lab.
func (l *Lab) writeOwner() error {
	if l.owner != 0 {
		start, _ := startTime(l.owner)
		if err := os.WriteFile(filepath.Join(l.Dir, "owner"), fmt.Appendf(nil, "%d %s\n", l.owner, start), 0o644); err != nil {
			return err
		}
	}
	if !l.ownUp {
		return nil
	}
	start, _ := startTime(os.Getpid())
	return os.WriteFile(filepath.Join(l.Dir, "up.pid"), fmt.Appendf(nil, "%d %s\n", os.Getpid(), start), 0o644)
}

// build builds the binaries in the background, while the network and etcd come up, unless
// Options.BinDir gave them. Always a fresh build of the working tree (incremental, about a
// second): a stale bin/ would test yesterday's code.
func (l *Lab) build() <-chan error {
	done := make(chan error, 1)
	if l.bin != "" {
		done <- nil
		return done
	}
	l.bin = filepath.Join(l.Dir, "bin")
	go func() {
		repo, err := dockertest.RepoRoot()
		if err != nil {
			done <- err
			return
		}
		log, err := os.Create(filepath.Join(l.Dir, "build.log"))
		if err != nil {
			done <- err
			return
		}
		defer log.Close()
		ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool(), "build", "-o", l.bin+"/", "./cmd/talkingdata-ipam", "./cmd/ipamctl")
		cmd.Dir, cmd.Stdout, cmd.Stderr = repo, log, log
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		done <- cmd.Run()
	}()
	return done
}

// network makes the switch and every node's eth0 on it. Each veth is created directly inside
// its two namespaces, so nothing appears in the machine's own namespace, even for a moment.
// IPv6 addresses skip duplicate address detection (nodad): they are unique by construction,
// and DAD would keep them unusable for a second or two.
func (l *Lab) network() error {
	sw := l.ns("sw")
	steps := [][]string{
		{"netns", "add", sw}, {"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", "sw0", "type", "bridge"}, {"-n", sw, "link", "set", "sw0", "up"},
		{"-n", sw, "link", "add", "router", "type", "veth", "peer", "name", "p-router"},
		{"-n", sw, "link", "set", "p-router", "master", "sw0", "up"},
		{"-n", sw, "addr", "add", fmt.Sprintf("%s/%d", router, plen), "dev", "router"},
		{"-n", sw, "addr", "add", fmt.Sprintf("%s/%d", router6, plen6), "dev", "router", "nodad"},
		{"-n", sw, "link", "set", "router", "up"},
	}
	attach := func(node, addr, addr6 string) {
		ns := l.ns(node)
		steps = append(steps, []string{"netns", "add", ns}, []string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", node, "netns", sw},
			[]string{"-n", sw, "link", "set", node, "master", "sw0", "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, plen), "dev", "eth0"})
		if addr6 != "" {
			steps = append(steps, []string{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr6, plen6), "dev", "eth0", "nodad"})
		}
		steps = append(steps, []string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", ns, "route", "add", "default", "via", router.String()})
		if addr6 != "" {
			steps = append(steps, []string{"-n", ns, "-6", "route", "add", "default", "via", router6.String()})
		}
	}
	for k := 1; k <= etcdMembers; k++ {
		attach("etcd"+strconv.Itoa(k), etcdAddr(k).String(), "")
	}
	for k := 1; k <= l.hosts; k++ {
		attach("h"+strconv.Itoa(k), hostAddr(k).String(), hostAddr6(k).String())
	}
	ip := testproc.LookTool("ip")
	for _, st := range steps {
		if out, err := exec.Command(ip, st...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(st, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// pathDirs are what exec puts first on PATH: the lab's binaries and the docker CLI that matches
// the system's dockerd; on a host, that host's CLI before them.
func (l *Lab) pathDirs() error {
	for _, b := range []string{"talkingdata-ipam", "ipamctl"} {
		if !fileExists(filepath.Join(l.bin, b)) {
			return fmt.Errorf("no %s in %s", b, l.bin)
		}
	}
	links := map[string]string{
		filepath.Join(l.Dir, "path", "talkingdata-ipam"): filepath.Join(l.bin, "talkingdata-ipam"),
		filepath.Join(l.Dir, "path", "ipamctl"):          filepath.Join(l.bin, "ipamctl"),
		filepath.Join(l.Dir, "path", "docker"):           systemEngine().Docker,
	}
	for k := 1; k <= l.hosts; k++ {
		links[filepath.Join(l.hostDir(k), "path", "docker")] = l.engines[k-1].Docker
	}
	for link, target := range links {
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts a daemon of the lab in node's network namespace, detached, with a clean
// environment, its log NAME.log and pid file NAME.pid in dir.
func (l *Lab) spawn(node, dir, name, path string, args ...string) (*testproc.Proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(testproc.LookTool("nsenter"), append([]string{"--net=" + l.nsPath(node), "--"}, args...)...)
	cmd.Env = []string{"PATH=" + path, "HOME=/root", "LANG=C.UTF-8"}
	p, err := testproc.Spawn(name+" of "+node, filepath.Join(dir, name+".log"), cmd, true)
	if err != nil {
		return nil, err
	}
	return p, writePid(filepath.Join(dir, name+".pid"), p.Pid())
}

func writePid(path string, pid int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// spawnPlugin starts host k's plugin with the lab's flags.
func (l *Lab) spawnPlugin(k int) (*testproc.Proc, error) {
	d := l.hostDir(k)
	for _, sub := range []string{"plugins", "data", "exec"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return nil, err
		}
	}
	args := append([]string{filepath.Join(l.bin, "talkingdata-ipam"), "--host-id", "h" + strconv.Itoa(k),
		"--etcd-endpoints", strings.Join(l.Etcd(), ","), "--socket", l.PluginSocket(k), "--log-level", "debug"},
		l.pluginArgs...)
	return l.spawn("h"+strconv.Itoa(k), d, "plugin", daemonPath, args...)
}

// waitPlugins waits until every plugin has bound its socket.
func (l *Lab) waitPlugins() error {
	return poll(20*time.Second, 50*time.Millisecond, "plugin sockets", func() (bool, error) {
		ready := true
		for k := 1; k <= l.hosts; k++ {
			if !l.PluginAlive(k) {
				return false, l.exited(k, "plugin")
			}
			if fi, err := os.Stat(l.PluginSocket(k)); err != nil || fi.Mode().Type() != os.ModeSocket {
				ready = false
			}
		}
		return ready, nil
	})
}

// startDockerd starts host k's dockerd in the host's netns and a private mount namespace.
func (l *Lab) startDockerd(k int, driver string) error {
	d, e := l.hostDir(k), l.engines[k-1]
	// Its own config file, so the machine's /etc/docker/daemon.json cannot change it. Networks
	// dockerd numbers itself (swarm's docker_gwbridge) stay inside 198.18.0.0/15.
	cfg := filepath.Join(d, "daemon.json")
	if err := os.WriteFile(cfg, []byte(`{"default-address-pools": [{"base": "198.19.128.0/18", "size": 24}]}`+"\n"), 0o644); err != nil {
		return err
	}
	args := append([]string{testproc.LookTool("unshare"), "-m", "--propagation", "private", "--",
		"/bin/sh", "-c", dockerdScript, "sh", filepath.Join(d, "plugins"), l.ns("h" + strconv.Itoa(k)),
		e.Dockerd, "--config-file", cfg, "--data-root", filepath.Join(d, "data"), "--exec-root", filepath.Join(d, "exec"),
		"--pidfile", filepath.Join(d, "exec", "dockerd.pid"), "--host", l.DockerHost(k), "--storage-driver", driver,
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--cgroup-parent", "/" + l.ns("h"+strconv.Itoa(k))},
		e.Args...)
	_, err := l.spawn("h"+strconv.Itoa(k), d, "dockerd", e.DockerdPath(), args...)
	return err
}

// waitDockerd waits until every dockerd answers its CLI.
func (l *Lab) waitDockerd() error {
	ready := map[int]bool{}
	return poll(60*time.Second, 100*time.Millisecond, "dockerd answering", func() (bool, error) {
		for k := 1; k <= l.hosts; k++ {
			if ready[k] {
				continue
			}
			if !l.alive(filepath.Join(l.hostDir(k), "dockerd.pid")) {
				return false, l.exited(k, "dockerd")
			}
			if l.dockerVersion(k, 5*time.Second) != "" {
				ready[k] = true
			}
		}
		return len(ready) == l.hosts, nil
	})
}

// dockerVersion is host k's dockerd version and API, or "" when it does not answer in time.
func (l *Lab) dockerVersion(k int, timeout time.Duration) string {
	out, err := run(timeout, func(ctx context.Context) (*exec.Cmd, error) {
		return l.dockerCmd(ctx, k, "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"), nil
	})
	if err != nil {
		return ""
	}
	return out
}

// importImage imports the busybox image once, on h1, and loads it into the other hosts, so that
// every host has the same image ID: a swarm service naming the image by ID runs it from the
// local store, where a name would make each node try a registry first.
func (l *Lab) importImage() error {
	tarball, err := dockertest.BusyboxRootfs()
	if err != nil {
		return err
	}
	saved := filepath.Join(l.Dir, "image.tar")
	defer os.Remove(saved)
	docker := func(k int, stdin io.Reader, args ...string) error {
		log, err := os.OpenFile(filepath.Join(l.hostDir(k), "import.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer log.Close()
		_, err = run(2*time.Minute, func(ctx context.Context) (*exec.Cmd, error) {
			c := l.dockerCmd(ctx, k, args...)
			c.Stdin, c.Stdout = stdin, log
			return c, nil
		})
		if err != nil {
			return fmt.Errorf("docker %s on h%d: %w", args[0], k, err)
		}
		return nil
	}
	if err := docker(1, bytes.NewReader(tarball), "import", "--change", `CMD ["/bin/sh"]`, "-", image); err != nil {
		return err
	}
	if err := docker(1, nil, "save", "-o", saved, image); err != nil {
		return err
	}
	errs := make(chan error, l.hosts)
	for k := 2; k <= l.hosts; k++ {
		go func() { errs <- docker(k, nil, "load", "-i", saved) }()
	}
	var all []error
	for k := 2; k <= l.hosts; k++ {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// poll calls check every interval until it reports done or fails, for at most timeout.
func poll(timeout, interval time.Duration, what string, check func() (bool, error)) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(interval) {
		done, err := check()
		if done || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v", what, timeout)
		}
	}
}

// exited is the error for host k's daemon name (plugin, dockerd) that has exited, with its log.
func (l *Lab) exited(k int, name string) error {
	log := filepath.Join(l.hostDir(k), name+".log")
	return fmt.Errorf("%s of h%d exited\n--- %s\n%s", name, k, log, testproc.Tail(log, logTailLines))
}
