// Package lab runs a multi-host talkingdata lab on one machine, for tests (Up) and by hand
// (scripts/lab.sh, which runs Main): a switch (netns tdlab-ID-sw, bridge sw0, the router
// 198.18.0.1/16 and 2001:db8::1/64), a three-member etcd cluster (198.18.0.21-23) and N hosts
// (default 3), each a network namespace tdlab-ID-hK with eth0 198.18.0.1K/16 and 2001:db8::1K/64
// on the switch, its own dockerd and its own talkingdata-ipam plugin running inside that
// namespace. Neither br0 nor any Docker network is created: tests do that, e.g. with `ipamctl
// bridge setup --nic eth0` through Exec.
//
// Everything lives in 198.18.0.0/16 (dockerd's own networks, such as swarm's docker_gwbridge, in
// 198.19.128.0/18) and 2001:db8::/64 inside namespaces the lab creates; the machine's own
// network namespace is never touched. Several labs (also from parallel test binaries) run at once.
// The daemons run in their own sessions and outlive the process that started them: Down (or
// `lab.sh down`, or the prune of the next Up once the owner has died) ends them.
//
//	l := lab.Up(t)
//	l.Exec(t, 1, "ipamctl", "bridge", "setup", "--nic", "eth0")
//	l.Docker(t, 1, "run", "--rm", l.Image(), "true")
//
// Exec runs a command in a host's network namespace (the machine's mount namespace) with
// DOCKER_HOST, IPAM_ETCD_ENDPOINTS, TDLAB_ETCD_ENDPOINTS and IPAM_HOST_ID set for that host and the
// lab's ipamctl, talkingdata-ipam and docker first on PATH.
//
// Faults for chaos tests: KillEtcd/StartEtcd SIGKILL an etcd member and restart it on its data
// dir, KillPlugin/StartPlugin do the same to a host's plugin (its stale socket is left for the
// restarted daemon to replace). Programs that are not tests use Start (or Open for a lab made by
// `scripts/lab.sh up`) and Close instead of Up.
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

const (
	upTimeout    = 3 * time.Minute // a cold `go build` of both binaries included
	cmdTimeout   = 2 * time.Minute // a hung plugin hangs dockerd; don't hang the test binary too
	logTailLines = 25
)

// Options configures UpWith. The zero value is what Up uses.
type Options struct {
	// Hosts is the number of hosts, 1-9; 0 means 3.
	Hosts int
	// BinDir holds the talkingdata-ipam and ipamctl binaries to run. Empty: both are built
	// from the working tree into the lab's directory (about a second with a warm build cache),
	// so the lab always runs the code under test.
	BinDir string
	// PluginArgs are extra talkingdata-ipam flags for every host (after --host-id,
	// --etcd-endpoints, --socket and --log-level debug). No spaces inside an argument.
	PluginArgs []string
	// Engines[i] is the Docker engine of host i+1 (dockertest.LookupEngine), e.g. 20.10, 28.5
	// and 29 for a cluster in the middle of a rolling upgrade; hosts beyond the slice, and zero
	// Engines, run the system's dockerd 20.10. Each host is driven with its engine's own CLI.
	// Empty: the engine names in $TALKINGDATA_LAB_ENGINES (comma-separated, one per host from h1,
	// e.g. "20.10,28.5,29"; names beyond the last host are left out, so a two-host lab of that
	// list runs 20.10 and 28.5), so a lab test can run on a mixed cluster.
	Engines []dockertest.Engine

	id    string // "": a fresh random one
	owner int    // the pid whose death lets prune remove the lab; 0: none (made by hand)
	ownUp bool   // up runs as a process of its own, which down kills too (up.pid)
}

// Lab is one lab.
type Lab struct {
	ID         string // the lab id: names netns tdlab-ID-*, the directory /tmp/tdlab-ID, cgroups
	Dir        string // /tmp/tdlab-ID: env file, logs, pid files, data
	hosts      int
	engines    []dockertest.Engine // one per host
	bin        string              // holds talkingdata-ipam and ipamctl
	etcdBin    string
	pluginArgs []string
	owner      int
	ownUp      bool
	down       bool
}

// Up builds a lab with three hosts and a fresh id; it is torn down when the test ends, after
// printing the tails of its logs if the test failed. It skips the test (fails it when CI=true)
// without root or the tools it needs.
func Up(t testing.TB) *Lab { return UpWith(t, Options{}) }

// UpWith is Up with options.
func UpWith(t testing.TB, o Options) *Lab {
	t.Helper()
	l := prepare(t, o)
	start := time.Now()
	var log strings.Builder
	if err := l.up(&log); err != nil {
		t.Fatalf("lab: %v\n%s", err, log.String())
	}
	t.Logf("lab %s up in %v (%s)", l.ID, time.Since(start).Round(10*time.Millisecond), l.Dir)
	return l
}

// prepare checks the prerequisites, picks an id, tears down labs left by dead test binaries and
// registers the cleanup; it does not run up.
func prepare(t testing.TB, o Options) *Lab {
	t.Helper()
	miss := missing(o)
	testproc.Require(t, miss == "", miss)
	if len(o.Engines) == 0 {
		for _, name := range envEngines(o) {
			o.Engines = append(o.Engines, dockertest.LookupEngine(t, name))
		}
	}
	o.owner = os.Getpid()
	l, err := newLab(o)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	// Labs whose test binary died without cleaning up (a -timeout panic, a SIGKILL).
	var out strings.Builder
	if err := prune(&out); err != nil {
		t.Logf("lab: removing labs of dead test binaries: %v", err)
	} else if out.Len() > 0 {
		t.Logf("lab: removed labs of dead test binaries:\n%s", out.String())
	}
	t.Cleanup(func() {
		if t.Failed() && !l.down {
			t.Logf("lab %s logs:\n%s", l.ID, l.LogTails(logTailLines))
		}
		l.Down(t)
	})
	return l
}

// missing names the first prerequisite of a lab that is missing, or returns "".
func missing(o Options) string {
	if os.Geteuid() != 0 {
		return "lab: needs root (namespaces, mounts, dockerd)"
	}
	for _, tool := range []struct{ name, pkg string }{
		{"ip", "iproute2"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"},
		{"dockerd", "docker.io"}, {"docker", "docker.io"},
		{"etcd", "etcd-server"}, {"etcdctl", "etcd-client"}, {"ping", "iputils-ping"},
	} {
		if testproc.LookTool(tool.name) == "" {
			return "lab: no " + tool.name + " (Debian package " + tool.pkg + ")"
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return "lab: no /bin/busybox (Debian package busybox-static)"
	}
	if o.BinDir == "" && goTool() == "" {
		return "lab: no go toolchain to build the binaries (set TDLAB_GO or Options.BinDir)"
	}
	return ""
}

// newLab picks a fresh id (or takes the one Main was given); nothing is created yet.
func newLab(o Options) (*Lab, error) {
	if o.Hosts < 0 || o.Hosts > maxHosts {
		return nil, fmt.Errorf("%d hosts: want 1-%d (0: 3)", o.Hosts, maxHosts)
	}
	if o.id == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		o.id = hex.EncodeToString(b[:])
	}
	if err := checkID(o.id); err != nil {
		return nil, err
	}
	l := &Lab{ID: o.id, hosts: o.hostCount(), pluginArgs: o.PluginArgs}
	l.Dir = stateDir(l.ID)
	if len(o.Engines) > l.hosts {
		return nil, fmt.Errorf("%d engines for %d hosts", len(o.Engines), l.hosts)
	}
	for k := 0; k < l.hosts; k++ {
		e := systemEngine()
		if k < len(o.Engines) && !o.Engines[k].IsZero() {
			e = o.Engines[k]
		}
		l.engines = append(l.engines, e)
	}
	l.bin, l.etcdBin, l.owner, l.ownUp = o.BinDir, etcdBinary(), o.owner, o.ownUp
	return l, nil
}

// Start is Up for programs that are not tests (tools/chaos): it returns errors instead of
// failing a test and registers no cleanup; call Close. Labs of dead owners are pruned first, so
// one left by a killed program is removed by the next Start or Up.
func Start(o Options) (*Lab, error) {
	if o.owner == 0 {
		o.owner = os.Getpid()
	}
	l, err := newLabOf(o)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := prune(io.Discard); err != nil {
		return nil, fmt.Errorf("lab: removing labs of dead owners: %w", err)
	}
	var log strings.Builder
	if err := l.up(&log); err != nil {
		_ = downOne(l.ID, io.Discard)
		return nil, fmt.Errorf("lab: %w\n%s", err, log.String())
	}
	return l, nil
}

// newLabOf is newLab for programs that are not tests: prerequisites and engines missing are
// errors.
func newLabOf(o Options) (*Lab, error) {
	if miss := missing(o); miss != "" {
		return nil, errors.New(miss)
	}
	if len(o.Engines) == 0 {
		for _, name := range envEngines(o) {
			e, miss := dockertest.FindEngine(name)
			if miss != "" {
				return nil, errors.New(miss)
			}
			o.Engines = append(o.Engines, e)
		}
	}
	return newLab(o)
}

// Open attaches to a running lab, e.g. one made with `scripts/lab.sh up`. Close does not tear
// it down.
func Open(id string) (*Lab, error) {
	l, err := attach(id)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.down = true
	if _, err := os.Stat(filepath.Join(l.Dir, "ready")); err != nil {
		return nil, fmt.Errorf("lab %s is not (fully) up: %w", id, err)
	}
	return l, nil
}

// attach reads lab id's env file.
func attach(id string) (*Lab, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	l := &Lab{ID: id, Dir: stateDir(id)}
	if err := l.load(); err != nil {
		return nil, fmt.Errorf("no lab %s: %w", id, err)
	}
	return l, nil
}

// Close tears down a lab made by Start (like Down, returning what is left as an error); for
// a lab attached with Open it does nothing.
func (l *Lab) Close() error {
	if l.down {
		return nil
	}
	l.down = true
	return downOne(l.ID, io.Discard)
}

// hostCount is the number of hosts o asks for.
func (o Options) hostCount() int {
	if o.Hosts == 0 {
		return 3
	}
	return o.Hosts
}

// envEngines are the engine names in $TALKINGDATA_LAB_ENGINES for o's hosts.
func envEngines(o Options) []string {
	names := dockertest.ParseEngineNames(os.Getenv("TALKINGDATA_LAB_ENGINES"))
	return names[:min(len(names), o.hostCount())]
}

// Engine is host i's Docker engine (Options.Engines; the system's 20.10 where none was given).
// For a lab attached with Open it has only Dockerd and Docker, and a Name for the system's.
func (l *Lab) Engine(i int) dockertest.Engine { return l.engines[l.host(i)-1] }

// Down tears the lab down (SIGKILL for everything; nothing is saved) and fails the test if
// anything of it is left. The cleanup registered by Up calls it; calling it earlier is fine.
func (l *Lab) Down(t testing.TB) {
	t.Helper()
	if l.down {
		return
	}
	l.down = true
	if err := downOne(l.ID, io.Discard); err != nil {
		t.Errorf("lab: %v", err)
	}
}

// Exec runs args in host's network namespace (hosts are numbered from 1) and returns its
// stdout, trimmed. It fails the test on error; the error shows stderr.
func (l *Lab) Exec(t testing.TB, host int, args ...string) string {
	t.Helper()
	out, err := l.Try(host, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Try is Exec returning the error (which includes stderr) instead of failing the test.
func (l *Lab) Try(host int, args ...string) (string, error) {
	return l.TryNode("h"+strconv.Itoa(l.host(host)), args...)
}

// TryNode runs args in any node's network namespace: "h1"…, "sw" (the switch, which holds the
// router 198.18.0.1 and reaches every node) or "etcd1"…"etcd3" (e.g. to cut a member off with
// `ip link set eth0 down`).
func (l *Lab) TryNode(node string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("lab: exec needs a command")
	}
	out, err := run(cmdTimeout, func(ctx context.Context) (*exec.Cmd, error) { return l.nodeCmd(ctx, node, args...) })
	if err != nil {
		return out, fmt.Errorf("lab %s: exec %s %s: %w", l.ID, node, strings.Join(args, " "), err)
	}
	return out, nil
}

// Docker runs host's own docker CLI (Debian's, matching dockerd 20.10, unless the host runs
// another engine) against host's dockerd and returns its stdout, trimmed; it fails
// the test on error.
func (l *Lab) Docker(t testing.TB, host int, args ...string) string {
	t.Helper()
	out, err := l.TryDocker(host, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryDocker is Docker returning the error (which includes the CLI's stderr).
func (l *Lab) TryDocker(host int, args ...string) (string, error) {
	out, err := run(cmdTimeout, func(ctx context.Context) (*exec.Cmd, error) {
		return l.dockerCmd(ctx, l.host(host), args...), nil
	})
	if err != nil {
		return out, fmt.Errorf("lab %s: docker -H h%d %s: %w", l.ID, host, strings.Join(args, " "), err)
	}
	return out, nil
}

// Etcdctl runs etcdctl against the lab's cluster (from the switch's namespace) and returns its
// stdout, trimmed; it fails the test on error. etcdctl 3.4 writes some results (endpoint
// health) to stderr: use -w json for those.
func (l *Lab) Etcdctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := l.TryNode("sw", append([]string{"etcdctl", "--endpoints", strings.Join(l.Etcd(), ",")}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Etcd returns the client URLs of the three members, http://198.18.0.2K:2379. They are
// reachable from the lab's namespaces only: use Exec, TryNode, Etcdctl, or DialContext for
// clients in the test process.
func (l *Lab) Etcd() []string { return l.etcd().Endpoints() }

// Hosts is the number of hosts.
func (l *Lab) Hosts() int { return l.hosts }

// HostAddr is host i's LAN address, 198.18.0.1i (on eth0 until br0 takes it over).
func (l *Lab) HostAddr(i int) netip.Addr { return hostAddr(l.host(i)) }

// HostAddr6 is host i's IPv6 LAN address, 2001:db8::1i.
func (l *Lab) HostAddr6(i int) netip.Addr { return hostAddr6(l.host(i)) }

// Router is the LAN's router, 198.18.0.1, in the switch's namespace.
func (l *Lab) Router() netip.Addr { return router }

// Router6 is the router's IPv6 address, 2001:db8::1.
func (l *Lab) Router6() netip.Addr { return router6 }

// Prefix is the LAN, 198.18.0.0/16.
func (l *Lab) Prefix() netip.Prefix { return netip.PrefixFrom(router, plen).Masked() }

// Prefix6 is the LAN's IPv6 prefix, 2001:db8::/64.
func (l *Lab) Prefix6() netip.Prefix { return netip.PrefixFrom(router6, plen6).Masked() }

// Image is the busybox image in every dockerd (tdlab/busybox:latest), with the same image ID
// everywhere: a swarm service names it by that ID, as a name would make each node try a registry.
// busybox sleep as PID 1 ignores SIGTERM: run long-lived containers with --init or --stop-timeout 1.
func (l *Lab) Image() string { return image }

// DockerHost is host i's -H / DOCKER_HOST value.
func (l *Lab) DockerHost(i int) string {
	return "unix://" + filepath.Join(l.hostDir(l.host(i)), "docker.sock")
}

// PluginSocket is host i's plugin socket (dockerd sees it as /run/docker/plugins/talkingdata.sock).
func (l *Lab) PluginSocket(i int) string {
	return filepath.Join(l.hostDir(l.host(i)), "plugins", "talkingdata.sock")
}

// PluginLog returns the whole log of host i's plugin so far (it runs with --log-level debug).
func (l *Lab) PluginLog(i int) string {
	b, err := os.ReadFile(filepath.Join(l.hostDir(l.host(i)), "plugin.log"))
	if err != nil {
		return fmt.Sprintf("(no plugin log: %v)", err)
	}
	return string(b)
}

// LogTails returns the last n lines of every log of the lab.
func (l *Lab) LogTails(n int) string {
	var logs []string
	for _, pat := range []string{"*.log", "etcd*/etcd.log", "h*/plugin.log", "h*/dockerd.log", "h*/import.log"} {
		m, _ := filepath.Glob(filepath.Join(l.Dir, pat))
		logs = append(logs, m...)
	}
	if len(logs) == 0 {
		return "(no logs in " + l.Dir + ")"
	}
	var b strings.Builder
	for _, p := range logs {
		fmt.Fprintf(&b, "--- %s\n%s\n", p, testproc.Tail(p, n))
	}
	return b.String()
}

// DialContext dials from the switch's network namespace, which reaches every address of the
// lab, so that clients in the test process can talk to lab addresses, e.g.
//
//	clientv3.Config{Endpoints: l.Etcd(), DialOptions: []grpc.DialOption{grpc.WithContextDialer(
//		func(ctx context.Context, a string) (net.Conn, error) { return l.DialContext(ctx, "tcp", a) })}}
//	http.Transport{DialContext: l.DialContext}
//
// A socket belongs to the namespace it was created in, so only the dial itself switches.
func (l *Lab) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := testproc.InNetNS(l.nsPath("sw"), func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// host checks a host number (from 1).
func (l *Lab) host(i int) int {
	if i < 1 || i > l.hosts {
		panic(fmt.Sprintf("lab: no host %d (hosts are 1…%d)", i, l.hosts))
	}
	return i
}

// nodeCmd runs args in node's network namespace (and the machine's mount namespace) with the
// node's environment: the lab's etcd and binaries, on a host also its dockerd, id and CLI.
func (l *Lab) nodeCmd(ctx context.Context, node string, args ...string) (*exec.Cmd, error) {
	if err := l.checkNode(node); err != nil {
		return nil, err
	}
	eps := strings.Join(l.Etcd(), ",")
	path := filepath.Join(l.Dir, "path") + ":" + os.Getenv("PATH") + ":" + sysPath
	// No ETCDCTL_ENDPOINTS: etcdctl 3.4 refuses to run when it and --endpoints are both given.
	env := append(testproc.EnvWithout("DOCKER_", "ETCDCTL_ENDPOINTS=", "IPAM_HOST_ID=", "PATH=", "TDLAB_ID=", "TDLAB_NODE="),
		"DOCKER_CONFIG="+filepath.Join(l.Dir, "cli"), "ETCDCTL_API=3", "IPAM_ETCD_ENDPOINTS="+eps,
		"TDLAB_ETCD_ENDPOINTS="+eps, "TDLAB_ID="+l.ID, "TDLAB_NODE="+node)
	if k, ok := l.hostNum(node); ok {
		path = filepath.Join(l.hostDir(k), "path") + ":" + path
		env = append(env, "DOCKER_HOST="+l.DockerHost(k), "IPAM_HOST_ID="+node)
	}
	cmd := exec.CommandContext(ctx, testproc.LookTool("nsenter"), append([]string{"--net=" + l.nsPath(node), "--"}, args...)...)
	cmd.Env = append(env, "PATH="+path)
	return cmd, nil
}

// sysPath is appended to PATH: a non-login root shell may lack the sbin directories.
const sysPath = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"

// dockerCmd runs host k's docker CLI against its dockerd, away from the user's ~/.docker.
func (l *Lab) dockerCmd(ctx context.Context, k int, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, l.engines[k-1].Docker, append([]string{"-H", l.DockerHost(k)}, args...)...)
	cmd.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_CONFIG="+filepath.Join(l.Dir, "cli"))
	return cmd
}

// run runs the command mk makes, in its own process group, killing that group after timeout
// (a hung plugin hangs dockerd; don't hang the caller too); it returns stdout, trimmed, and an
// error that carries stderr.
func run(timeout time.Duration, mk func(ctx context.Context) (*exec.Cmd, error)) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := mk(ctx)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	if c.Stdout == nil {
		c.Stdout = &stdout
	}
	c.Stderr = &stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	// A command that leaves a background child holding stdout must not block Wait forever.
	c.WaitDelay = 5 * time.Second
	err = c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("%w\nstderr: %s\nstdout: %s", err, strings.TrimSpace(stderr.String()), out)
	}
	return out, nil
}

// goTool is $TDLAB_GO, else go on PATH or of the toolchain that built this program.
func goTool() string {
	if p := os.Getenv("TDLAB_GO"); p != "" {
		return p
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}
