package lab

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdproc"
)

// Everything of lab ID is named from its id: namespaces tdlab-ID-NODE, the state directory
// /tmp/tdlab-ID (short: unix socket paths are limited to 108 bytes) and the containers' cgroup
// parents /tdlab-ID-hK. Addresses are fixed: 198.18.0.0/16 and 2001:db8::/64, the router .1,
// etcd members .2K, hosts .1K.
const (
	stateBase   = "/tmp"
	image       = "tdlab/busybox:latest"
	etcdMembers = 3
	maxHosts    = 9
	plen, plen6 = 16, 64
)

var (
	router  = netip.MustParseAddr("198.18.0.1")
	router6 = netip.MustParseAddr("2001:db8::1")
	validID = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
)

func etcdAddr(k int) netip.Addr  { return netip.MustParseAddr("198.18.0.2" + strconv.Itoa(k)) }
func hostAddr(k int) netip.Addr  { return netip.MustParseAddr("198.18.0.1" + strconv.Itoa(k)) }
func hostAddr6(k int) netip.Addr { return netip.MustParseAddr("2001:db8::1" + strconv.Itoa(k)) }

func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid lab id %q: want 1-16 of [a-z0-9]", id)
	}
	return nil
}

func stateDir(id string) string { return filepath.Join(stateBase, "tdlab-"+id) }

// ns is a node's network namespace name; node is h1…, sw or etcd1….
func (l *Lab) ns(node string) string     { return "tdlab-" + l.ID + "-" + node }
func (l *Lab) nsPath(node string) string { return "/run/netns/" + l.ns(node) }
func (l *Lab) hostDir(k int) string      { return filepath.Join(l.Dir, "h"+strconv.Itoa(k)) }

// etcd is the lab's cluster; its members are reached from the switch's namespace.
func (l *Lab) etcd() *etcdproc.Cluster {
	c := &etcdproc.Cluster{Bin: l.etcdBin, Token: "tdlab-" + l.ID, Detach: true, Dial: l.DialContext}
	for k := 1; k <= etcdMembers; k++ {
		name, a := "etcd"+strconv.Itoa(k), etcdAddr(k).String()
		c.Members = append(c.Members, etcdproc.Member{Name: name, Dir: filepath.Join(l.Dir, name),
			ClientURL: "http://" + a + ":2379", PeerURL: "http://" + a + ":2380", NetNS: l.nsPath(name)})
	}
	return c
}

// writeEnv writes the env file, KEY=VALUE lines: for `lab.sh env` and scripts, and for Open,
// which reads back what up chose (hosts, binaries, plugin flags, each host's engine).
func (l *Lab) writeEnv() error {
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "TDLAB_%s=%v\n", k, v) }
	kv("ID", l.ID)
	kv("DIR", l.Dir)
	kv("HOSTS", l.hosts)
	kv("ETCD_MEMBERS", etcdMembers)
	kv("ETCD_ENDPOINTS", strings.Join(l.Etcd(), ","))
	kv("ROUTER", router)
	kv("PREFIXLEN", plen)
	kv("ROUTER6", router6)
	kv("PREFIXLEN6", plen6)
	kv("IMAGE", image)
	kv("BIN", l.bin)
	kv("ETCD_BIN", l.etcdBin)
	kv("PLUGIN_ARGS", strings.Join(l.pluginArgs, " "))
	kv("SWITCH_NETNS", l.ns("sw"))
	for k := 1; k <= etcdMembers; k++ {
		e := "ETCD" + strconv.Itoa(k) + "_"
		kv(e+"NETNS", l.ns("etcd"+strconv.Itoa(k)))
		kv(e+"ADDR", etcdAddr(k))
		kv(e+"LOG", filepath.Join(l.Dir, "etcd"+strconv.Itoa(k), "etcd.log"))
	}
	for k := 1; k <= l.hosts; k++ {
		h := "H" + strconv.Itoa(k) + "_"
		kv(h+"NETNS", l.ns("h"+strconv.Itoa(k)))
		kv(h+"ADDR", hostAddr(k))
		kv(h+"ADDR6", hostAddr6(k))
		kv(h+"DOCKER_HOST", l.DockerHost(k))
		kv(h+"PLUGIN_SOCKET", l.PluginSocket(k))
		kv(h+"PLUGIN_LOG", filepath.Join(l.hostDir(k), "plugin.log"))
		kv(h+"DOCKERD_LOG", filepath.Join(l.hostDir(k), "dockerd.log"))
		kv(h+"DOCKERD", l.engines[k-1].Dockerd)
		kv(h+"DOCKER_CLI", l.engines[k-1].Docker)
	}
	return os.WriteFile(filepath.Join(l.Dir, "env"), []byte(b.String()), 0o644)
}

// load attaches l to lab l.ID from its env file.
func (l *Lab) load() error {
	f, err := os.Open(filepath.Join(l.Dir, "env"))
	if err != nil {
		return err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[strings.TrimPrefix(k, "TDLAB_")] = v
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if env["ID"] != l.ID {
		return fmt.Errorf("env file of lab %s names lab %q", l.ID, env["ID"])
	}
	l.hosts, _ = strconv.Atoi(env["HOSTS"])
	l.bin, l.etcdBin, l.pluginArgs = env["BIN"], env["ETCD_BIN"], strings.Fields(env["PLUGIN_ARGS"])
	sys := systemEngine()
	l.engines = nil
	for k := 1; k <= l.hosts; k++ {
		e := sys
		if d, cli := env["H"+strconv.Itoa(k)+"_DOCKERD"], env["H"+strconv.Itoa(k)+"_DOCKER_CLI"]; d != sys.Dockerd || cli != sys.Docker {
			e = dockertest.Engine{Dockerd: d, Docker: cli}
		}
		l.engines = append(l.engines, e)
	}
	return nil
}

// systemEngine is the engine of hosts given none: the system's, or $TDLAB_DOCKERD and
// $TDLAB_DOCKER_CLI.
func systemEngine() dockertest.Engine {
	e := dockertest.SystemEngine()
	if d := os.Getenv("TDLAB_DOCKERD"); d != "" {
		e = dockertest.Engine{Dockerd: d, Docker: e.Docker}
	}
	if cli := os.Getenv("TDLAB_DOCKER_CLI"); cli != "" {
		e.Docker = cli
	}
	return e
}
