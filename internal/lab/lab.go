// Package lab runs a multi-host talkingdata lab on one machine for tests, by driving
// scripts/lab.sh: a switch (netns tdlab-ID-sw, bridge sw0, the router 198.18.0.1/16 and
// 2001:db8::1/64), a three-member etcd cluster (198.18.0.21-23) and N hosts (default 3), each a
// network namespace tdlab-ID-hK with eth0 198.18.0.1K/16 and 2001:db8::1K/64 on the switch, its
// own dockerd and its own talkingdata-ipam plugin running inside that namespace. Neither br0 nor
// any Docker network is created: tests do that, e.g. with `ipamctl bridge setup --nic eth0`
// through Exec.
//
// Everything lives in 198.18.0.0/16 (dockerd's own networks, such as swarm's docker_gwbridge, in
// 198.19.128.0/18) and 2001:db8::/64 inside namespaces the lab creates; the machine's own
// network namespace is never touched. Several labs (also from parallel test binaries) run at once.
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
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	downTimeout  = 2 * time.Minute
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
	// list runs 20.10 and 28.5), so a lab test can run on a mixed cluster. No spaces inside an
	// Args entry.
	Engines []dockertest.Engine
}

// Lab is one running lab.
type Lab struct {
	ID      string // the lab id: names netns tdlab-ID-*, the directory /tmp/tdlab-ID, cgroups
	Dir     string // /tmp/tdlab-ID: env file, logs, pid files, data
	engines []dockertest.Engine
	script  string
	env     map[string]string
	hosts   int
	down    bool
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
	out, err := l.run(upTimeout, l.upEnv(o), "up")
	if err != nil {
		t.Fatalf("lab: up %s: %v\n%s", l.ID, err, out)
	}
	if err := l.loadEnv(); err != nil {
		t.Fatalf("lab: %v", err)
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
	if o.Hosts < 0 || o.Hosts > 9 {
		t.Fatalf("lab: Options.Hosts = %d, want 1-9 (0: 3)", o.Hosts)
	}
	if len(o.Engines) == 0 {
		for _, name := range envEngines(o) {
			o.Engines = append(o.Engines, dockertest.LookupEngine(t, name))
		}
	}
	l, err := newLab(o)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	// Labs whose test binary died without cleaning up (a -timeout panic, a SIGKILL).
	if out, err := l.run(downTimeout, nil, "prune"); err != nil {
		t.Logf("lab: removing labs of dead test binaries: %v", err)
	} else if out != "" {
		t.Logf("lab: removed labs of dead test binaries:\n%s", out)
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
		{"bash", "bash"}, {"ip", "iproute2"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"},
		{"setsid", "util-linux"}, {"dockerd", "docker.io"}, {"docker", "docker.io"},
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
		return "lab: no go toolchain to build the binaries (or set Options.BinDir)"
	}
	return ""
}

// newLab picks a fresh id; nothing is created yet.
func newLab(o Options) (*Lab, error) {
	repo, err := repoRoot()
	if err != nil {
		return nil, err
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	l := &Lab{ID: id, Dir: "/tmp/tdlab-" + id, script: filepath.Join(repo, "scripts", "lab.sh"), hosts: o.hostCount()}
	if len(o.Engines) > l.hosts {
		return nil, fmt.Errorf("%d engines for %d hosts", len(o.Engines), l.hosts)
	}
	l.engines = o.Engines
	return l, nil
}

// Start is Up for programs that are not tests (tools/chaos): it returns errors instead of
// failing a test and registers no cleanup; call Close. Labs of dead owners are pruned first, so
// one left by a killed program is removed by the next Start or Up.
func Start(o Options) (*Lab, error) {
	if miss := missing(o); miss != "" {
		return nil, errors.New(miss)
	}
	if o.Hosts < 0 || o.Hosts > 9 {
		return nil, fmt.Errorf("lab: Options.Hosts = %d, want 1-9 (0: 3)", o.Hosts)
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
	l, err := newLab(o)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if _, err := l.run(downTimeout, nil, "prune"); err != nil {
		return nil, fmt.Errorf("lab: removing labs of dead owners: %w", err)
	}
	if out, err := l.run(upTimeout, l.upEnv(o), "up"); err != nil {
		_, _ = l.run(downTimeout, nil, "down", l.ID)
		return nil, fmt.Errorf("lab: up %s: %w\n%s", l.ID, err, out)
	}
	if err := l.loadEnv(); err != nil {
		_, _ = l.run(downTimeout, nil, "down", l.ID)
		return nil, fmt.Errorf("lab: %w", err)
	}
	return l, nil
}

// Open attaches to a running lab, e.g. one made with `scripts/lab.sh up`. Close does not tear
// it down.
func Open(id string) (*Lab, error) {
	repo, err := repoRoot()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l := &Lab{ID: id, Dir: "/tmp/tdlab-" + id, script: filepath.Join(repo, "scripts", "lab.sh"), down: true}
	if err := l.loadEnv(); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if _, err := os.Stat(filepath.Join(l.Dir, "ready")); err != nil {
		return nil, fmt.Errorf("lab %s is not (fully) up: %w", id, err)
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
	if out, err := l.run(downTimeout, nil, "down", l.ID); err != nil {
		return fmt.Errorf("lab: down %s: %w\n%s", l.ID, err, out)
	}
	if left := l.Leftovers(); len(left) > 0 {
		return fmt.Errorf("lab %s: left after down: %s", l.ID, strings.Join(left, "; "))
	}
	return nil
}

// KillEtcd SIGKILLs etcd member k (1-3), as a crash would; an error if it is not running.
func (l *Lab) KillEtcd(k int) error { return l.fault("etcd-kill", strconv.Itoa(k)) }

// StartEtcd restarts etcd member k on its data dir, so it rejoins as the member it was, and
// waits (up to 30s) until it answers a quorum read; an error if it is running.
func (l *Lab) StartEtcd(k int) error { return l.fault("etcd-start", strconv.Itoa(k)) }

// KillPlugin SIGKILLs host h's plugin (kill -9: it leaves its socket file behind).
func (l *Lab) KillPlugin(h int) error { return l.fault("plugin-kill", l.hostNode(h)) }

// StartPlugin restarts host h's plugin with the flags it had, on the same socket, and waits
// (up to 20s) until it has bound it.
func (l *Lab) StartPlugin(h int) error { return l.fault("plugin-start", l.hostNode(h)) }

// EtcdAlive reports whether member k's process is running (not whether it is healthy).
func (l *Lab) EtcdAlive(k int) bool {
	return pidAlive(filepath.Join(l.Dir, "etcd"+strconv.Itoa(k), "etcd.pid"))
}

// PluginAlive reports whether host h's plugin process is running.
func (l *Lab) PluginAlive(h int) bool {
	return pidAlive(filepath.Join(l.Dir, l.hostNode(h), "plugin.pid"))
}

func pidAlive(pidfile string) bool {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !bytes.Contains(stat, []byte(") Z ")) && !bytes.Contains(stat, []byte(") X "))
}

func (l *Lab) fault(cmd, arg string) error {
	if _, err := l.run(cmdTimeout, nil, cmd, arg); err != nil {
		return fmt.Errorf("lab %s: %s %s: %w", l.ID, cmd, arg, err)
	}
	return nil
}

func (l *Lab) upEnv(o Options) []string {
	env := []string{"TDLAB_OWNER_PID=" + strconv.Itoa(os.Getpid()), "TDLAB_HOSTS=" + strconv.Itoa(l.hosts)}
	if o.BinDir != "" {
		env = append(env, "TDLAB_BIN="+o.BinDir)
	} else {
		env = append(env, "TDLAB_GO="+goTool())
	}
	if len(o.PluginArgs) > 0 {
		env = append(env, "TDLAB_PLUGIN_ARGS="+strings.Join(o.PluginArgs, " "))
	}
	for i, e := range l.engines { // o.Engines, or those of $TALKINGDATA_LAB_ENGINES
		if e.IsZero() {
			continue
		}
		h := "TDLAB_H" + strconv.Itoa(i+1) + "_"
		env = append(env, h+"DOCKERD="+e.Dockerd, h+"DOCKER_CLI="+e.Docker,
			h+"DOCKERD_ARGS="+strings.Join(e.Args, " "), h+"PATH="+strings.Join(e.Path, ":"))
	}
	return env
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
func (l *Lab) Engine(i int) dockertest.Engine {
	if i := i - 1; i >= 0 && i < len(l.engines) && !l.engines[i].IsZero() {
		return l.engines[i]
	}
	// A lab attached with Open: what its env file says (Name only when it is the system's).
	e := dockertest.SystemEngine()
	if d, cli := l.hostVar(i, "DOCKERD"), l.hostVar(i, "DOCKER_CLI"); d != "" && cli != "" && (d != e.Dockerd || cli != e.Docker) {
		e = dockertest.Engine{Dockerd: d, Docker: cli}
	}
	return e
}

// Down tears the lab down (SIGKILL for everything; nothing is saved) and fails the test if
// anything of it is left. The cleanup registered by Up calls it; calling it earlier is fine.
func (l *Lab) Down(t testing.TB) {
	t.Helper()
	if l.down {
		return
	}
	l.down = true
	if out, err := l.run(downTimeout, nil, "down", l.ID); err != nil {
		t.Errorf("lab: down %s: %v\n%s", l.ID, err, out)
	}
	if left := l.Leftovers(); len(left) > 0 {
		t.Errorf("lab %s: left after down: %s", l.ID, strings.Join(left, "; "))
	}
}

// Leftovers lists what of the lab exists: network namespaces, processes naming the lab, its
// directory, cgroups and mounts. Empty after Down.
func (l *Lab) Leftovers() []string {
	var left []string
	token := "tdlab-" + l.ID
	if ns, _ := filepath.Glob("/run/netns/" + token + "-*"); len(ns) > 0 {
		left = append(left, fmt.Sprintf("netns %v", ns))
	}
	if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) {
		left = append(left, "dir "+l.Dir)
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/" + token + "-*")
	cg2, _ := filepath.Glob("/sys/fs/cgroup/" + token + "-*")
	if cg = append(cg, cg2...); len(cg) > 0 {
		left = append(left, fmt.Sprintf("cgroups %v", cg))
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && (bytes.Contains(b, []byte(token+"-")) || bytes.Contains(b, []byte(token+"/"))) {
		left = append(left, "mounts naming "+token)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Contains(cmdline, []byte(token+"-")) || bytes.Contains(cmdline, []byte(token+"/")) {
			left = append(left, fmt.Sprintf("process %d: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return left
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
	return l.TryNode(l.hostNode(host), args...)
}

// TryNode runs args in any node's network namespace: "h1"…, "sw" (the switch, which holds the
// router 198.18.0.1 and reaches every node) or "etcd1"…"etcd3" (e.g. to cut a member off with
// `ip link set eth0 down`).
func (l *Lab) TryNode(node string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("lab: exec needs a command")
	}
	out, err := l.run(cmdTimeout, nil, "exec", append([]string{node}, args...)...)
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
	out, err := l.run(cmdTimeout, nil, "docker", append([]string{l.hostNode(host)}, args...)...)
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
func (l *Lab) Etcd() []string { return strings.Split(l.env["TDLAB_ETCD_ENDPOINTS"], ",") }

// Hosts is the number of hosts.
func (l *Lab) Hosts() int { return l.hosts }

// HostAddr is host i's LAN address, 198.18.0.1i (on eth0 until br0 takes it over).
func (l *Lab) HostAddr(i int) netip.Addr { return netip.MustParseAddr(l.hostVar(i, "ADDR")) }

// HostAddr6 is host i's IPv6 LAN address, 2001:db8::1i.
func (l *Lab) HostAddr6(i int) netip.Addr { return netip.MustParseAddr(l.hostVar(i, "ADDR6")) }

// Router is the LAN's router, 198.18.0.1, in the switch's namespace.
func (l *Lab) Router() netip.Addr { return netip.MustParseAddr(l.env["TDLAB_ROUTER"]) }

// Router6 is the router's IPv6 address, 2001:db8::1.
func (l *Lab) Router6() netip.Addr { return netip.MustParseAddr(l.env["TDLAB_ROUTER6"]) }

// Prefix is the LAN, 198.18.0.0/16.
func (l *Lab) Prefix() netip.Prefix { return l.prefix(l.Router(), "TDLAB_PREFIXLEN") }

// Prefix6 is the LAN's IPv6 prefix, 2001:db8::/64.
func (l *Lab) Prefix6() netip.Prefix { return l.prefix(l.Router6(), "TDLAB_PREFIXLEN6") }

func (l *Lab) prefix(router netip.Addr, lenVar string) netip.Prefix {
	bits, _ := strconv.Atoi(l.env[lenVar])
	return netip.PrefixFrom(router, bits).Masked()
}

// Image is the busybox image in every dockerd (tdlab/busybox:latest), with the same image ID
// everywhere: a swarm service names it by that ID, as a name would make each node try a registry.
// busybox sleep as PID 1 ignores SIGTERM: run long-lived containers with --init or --stop-timeout 1.
func (l *Lab) Image() string { return l.env["TDLAB_IMAGE"] }

// DockerHost is host i's -H / DOCKER_HOST value.
func (l *Lab) DockerHost(i int) string { return l.hostVar(i, "DOCKER_HOST") }

// PluginSocket is host i's plugin socket (dockerd sees it as /run/docker/plugins/talkingdata.sock).
func (l *Lab) PluginSocket(i int) string { return l.hostVar(i, "PLUGIN_SOCKET") }

// PluginLog returns the whole log of host i's plugin so far (it runs with --log-level debug).
func (l *Lab) PluginLog(i int) string {
	b, err := os.ReadFile(l.hostVar(i, "PLUGIN_LOG"))
	if err != nil {
		return fmt.Sprintf("(no plugin log: %v)", err)
	}
	return string(b)
}

// LogTails returns the last n lines of every log of the lab.
func (l *Lab) LogTails(n int) string {
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "*.log"))
	for _, pat := range []string{"etcd*/etcd.log", "h*/plugin.log", "h*/dockerd.log", "h*/import.log"} {
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
	err := testproc.InNetNS("/run/netns/"+l.env["TDLAB_SWITCH_NETNS"], func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

func (l *Lab) hostNode(i int) string {
	if i < 1 || i > l.hosts {
		panic(fmt.Sprintf("lab: no host %d (hosts are 1…%d)", i, l.hosts))
	}
	return "h" + strconv.Itoa(i)
}

func (l *Lab) hostVar(i int, name string) string {
	return l.env["TDLAB_H"+strings.TrimPrefix(l.hostNode(i), "h")+"_"+name]
}

// loadEnv reads the env file up wrote: KEY=VALUE lines, values without quotes.
func (l *Lab) loadEnv() error {
	f, err := os.Open(filepath.Join(l.Dir, "env"))
	if err != nil {
		return err
	}
	defer f.Close()
	l.env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			l.env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if l.env["TDLAB_ID"] != l.ID {
		return fmt.Errorf("env file of lab %s names lab %q", l.ID, l.env["TDLAB_ID"])
	}
	l.hosts, _ = strconv.Atoi(l.env["TDLAB_HOSTS"])
	return nil
}

// command builds `lab.sh -i ID CMD ARGS…` in its own process group, with the caller's
// TDLAB_* settings that name a lab or its binaries removed.
func (l *Lab) command(ctx context.Context, env []string, cmd string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, "bash", append([]string{l.script, "-i", l.ID, cmd}, args...)...)
	for _, kv := range os.Environ() {
		// TDLAB_H: TDLAB_HOSTS and the per-host engine settings TDLAB_Hk_….
		if !hasAnyPrefix(kv, "TDLAB_ID=", "TDLAB_BIN=", "TDLAB_H", "TDLAB_PLUGIN_ARGS=", "TDLAB_OWNER_PID=") {
			c.Env = append(c.Env, kv)
		}
	}
	c.Env = append(c.Env, env...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	// A command that leaves a background child holding stdout must not block Wait forever.
	c.WaitDelay = 5 * time.Second
	return c
}

// run runs the script and returns its stdout, trimmed; the error carries stderr.
func (l *Lab) run(timeout time.Duration, env []string, cmd string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := l.command(ctx, env, cmd, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("%w\nstderr: %s\nstdout: %s", err, strings.TrimSpace(stderr.String()), out)
	}
	return out, nil
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// repoRoot is the repository holding scripts/lab.sh.
func repoRoot() (string, error) {
	root, err := dockertest.RepoRoot()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "lab.sh")); err != nil {
		return "", err
	}
	return root, nil
}

func goTool() string {
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
