package lab

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

const usage = `lab — a multi-host talkingdata IPAM lab on one machine, for tests and by hand. Needs root.

  lab.sh [-i ID] up                build a lab (a fresh random id unless -i / $TDLAB_ID)
  lab.sh [-i ID] status            each component and whether it is alive (all labs without an id)
  lab.sh [-i ID] exec NODE [CMD…]  run CMD (default: a shell) in NODE's network namespace
  lab.sh [-i ID] docker HOST ARGS… the docker CLI against HOST's dockerd
  lab.sh [-i ID] env               print the lab's env file
  lab.sh down [ID…]                tear labs down (every tdlab-* lab found without an id)
  lab.sh list                      ids of the labs found
  lab.sh prune                     tear down labs whose owner ($TDLAB_OWNER_PID at up) is gone
  lab.sh [-i ID] etcd-kill K       SIGKILL etcd member K (1-3)
  lab.sh [-i ID] etcd-start K [--no-wait]
                                   restart member K on its data dir; waits until it answers
  lab.sh [-i ID] plugin-kill H     SIGKILL host H's plugin (kill -9: its socket file stays)
  lab.sh [-i ID] plugin-start H [--no-wait]
                                   restart host H's plugin with the flags of up, on the same
                                   socket (the daemon replaces the stale one); waits until
                                   it has bound the socket

NODE is h1…hN (or just 1…N), sw (the switch, which also holds the router 198.18.0.1) or etcd1…3;
HOST is h1…hN or 1…N. exec, docker and env need no id when exactly one lab exists. exec runs in
the machine's mount namespace with IPAM_ETCD_ENDPOINTS and TDLAB_ETCD_ENDPOINTS (the lab's
etcd), on a host also DOCKER_HOST and IPAM_HOST_ID, and the lab's ipamctl, talkingdata-ipam and
the host's docker CLI first on PATH:
  lab.sh exec h1 ipamctl bridge setup --nic eth0
  lab.sh exec h2 docker run --rm tdlab/busybox ip addr
  lab.sh exec sw etcdctl --endpoints http://198.18.0.21:2379 member list

Topology of lab ID, everything in 198.18.0.0/16 (dockerd's own networks in 198.19.128.0/18) and
2001:db8::/64 inside namespaces the lab creates (nothing is added to the machine's own network
namespace):

  netns tdlab-ID-sw      bridge sw0; veth "router" on it with 198.18.0.1/16 and 2001:db8::1/64
  netns tdlab-ID-etcdK   eth0 198.18.0.2K/16 on sw0; etcd member etcdK, client http://198.18.0.2K:2379
  netns tdlab-ID-hK      eth0 198.18.0.1K/16 and 2001:db8::1K/64 on sw0, default via 198.18.0.1
                         and 2001:db8::1;
                         talkingdata-ipam --host-id hK (socket /tmp/tdlab-ID/hK/plugins/talkingdata.sock)
                         dockerd (socket /tmp/tdlab-ID/hK/docker.sock), in its own mount namespace
                         where /tmp/tdlab-ID/hK/plugins is /run/docker/plugins; --bridge=none
                         --iptables=false, default address pools in 198.19.128.0/18, containers
                         under cgroup parent /tdlab-ID-hK;
                         image tdlab/busybox:latest, the same image ID on every host.
  /tmp/tdlab-ID/         state: env, logs, pid files, data. No br0 and no docker network is made.

Environment:
  TDLAB_ID          lab id ([a-z0-9], at most 16)        TDLAB_HOSTS       hosts, 1-9 (default 3)
  TDLAB_BIN         directory with talkingdata-ipam and ipamctl to use (else a fresh build of
                    the working tree into the state dir)
  TDLAB_PLUGIN_ARGS extra daemon flags, split on spaces   TDLAB_OWNER_PID   see prune
  TDLAB_DOCKERD, TDLAB_ETCD, TDLAB_DOCKER_CLI, TDLAB_GO, TDLAB_STORAGE_DRIVER: override programs
  TDLAB_Hk_DOCKERD, TDLAB_Hk_DOCKER_CLI, TDLAB_Hk_DOCKERD_ARGS (split on spaces), TDLAB_Hk_PATH
                    (directories put first on that dockerd's PATH: its containerd, runc,
                    docker-init, docker-proxy): another engine on host k, e.g. a cluster in the
                    middle of a rolling upgrade. Unset: the engines named in
                    $TALKINGDATA_LAB_ENGINES (e.g. 20.10,28.5,29), else the system's.

Daemons outlive the command (own sessions). down SIGKILLs everything of the lab (there is
nothing to save): processes whose command line names /tmp/tdlab-ID/ or tdlab-ID-, processes in
the lab's namespaces or its containers' cgroups, and their descendants; then it deletes the
namespaces, mounts, cgroups and the state dir. It works on half-built labs and is idempotent.
`

// Main is the lab's command line (scripts/lab.sh runs it); it returns the exit status.
func Main(args []string) int {
	id := os.Getenv("TDLAB_ID")
	for len(args) > 0 {
		switch args[0] {
		case "-i", "--id":
			if len(args) < 2 {
				return fail(errors.New(args[0] + " needs an id"))
			}
			id, args = args[1], args[2:]
			continue
		case "-h", "--help", "help":
			fmt.Print(usage)
			return 0
		}
		break
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "up":
		err = cliUp(id, args)
	case "down":
		err = cliDown(id, args)
	case "status":
		err = cliStatus(id)
	case "list":
		fmt.Println(strings.Join(ids(), "\n"))
	case "prune":
		err = prune(os.Stdout)
	case "exec", "docker", "env", "etcd-kill", "etcd-start", "plugin-kill", "plugin-start":
		var l *Lab
		if l, err = resolve(id); err == nil {
			err = l.command(cmd, args)
		}
	default:
		fmt.Fprintf(os.Stderr, "lab: unknown command %q\n%s", cmd, usage)
		return 2
	}
	return fail(err)
}

func fail(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "lab.sh:", err)
	return 1
}

// cliUp builds a lab from the environment's settings.
func cliUp(id string, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("up: unknown argument %s", args[0])
	}
	o, err := envOptions()
	if err != nil {
		return err
	}
	o.id = id
	l, err := newLabOf(o)
	if err != nil {
		return err
	}
	if err := l.up(os.Stderr); err != nil {
		return fmt.Errorf("%w\nlab %s is not (fully) up; logs are in %s; remove it with: scripts/lab.sh down %s", err, l.ID, l.Dir, l.ID)
	}
	fmt.Printf("lab %s is up: env in %s/env\n  etcd     %s\n  hosts   ", l.ID, l.Dir, strings.Join(l.Etcd(), ","))
	for k := 1; k <= l.hosts; k++ {
		fmt.Printf(" h%d=%s", k, hostAddr(k))
	}
	fmt.Printf(" (router %s)\n  exec     scripts/lab.sh -i %s exec h1 ip addr\n  docker   scripts/lab.sh -i %[2]s docker h1 ps\n  down     scripts/lab.sh down %[2]s\n", router, l.ID)
	return nil
}

// envOptions are the Options the TDLAB_* variables ask for.
func envOptions() (Options, error) {
	o := Options{BinDir: os.Getenv("TDLAB_BIN"), PluginArgs: strings.Fields(os.Getenv("TDLAB_PLUGIN_ARGS")), ownUp: true}
	if h := os.Getenv("TDLAB_HOSTS"); h != "" {
		n, err := strconv.Atoi(h)
		if err != nil || n < 1 {
			return o, fmt.Errorf("TDLAB_HOSTS=%s: want 1-%d", h, maxHosts)
		}
		o.Hosts = n
	}
	if p := os.Getenv("TDLAB_OWNER_PID"); p != "" {
		o.owner, _ = strconv.Atoi(p)
	}
	if o.BinDir != "" {
		abs, err := filepath.Abs(o.BinDir)
		if err != nil {
			return o, err
		}
		o.BinDir = abs
	}
	sys := systemEngine()
	for k := 1; k <= o.hostCount(); k++ {
		v := func(name string) string { return os.Getenv("TDLAB_H" + strconv.Itoa(k) + "_" + name) }
		if v("DOCKERD")+v("DOCKER_CLI")+v("DOCKERD_ARGS")+v("PATH") == "" {
			continue
		}
		e := dockertest.Engine{Dockerd: cmp.Or(v("DOCKERD"), sys.Dockerd), Docker: cmp.Or(v("DOCKER_CLI"), sys.Docker),
			Args: strings.Fields(v("DOCKERD_ARGS")), Path: filepath.SplitList(v("PATH"))}
		o.Engines = append(o.Engines, make([]dockertest.Engine, k-1-len(o.Engines))...)
		o.Engines = append(o.Engines, e)
	}
	return o, nil
}

// etcdBinary is $TDLAB_ETCD, else etcd on PATH.
func etcdBinary() string { return cmp.Or(os.Getenv("TDLAB_ETCD"), testproc.LookTool("etcd")) }

func cliDown(id string, args []string) error {
	if os.Geteuid() != 0 {
		return errors.New("down needs root")
	}
	if len(args) == 0 && id != "" {
		args = []string{id}
	}
	if len(args) == 0 {
		if args = ids(); len(args) == 0 {
			fmt.Println("no labs")
			return nil
		}
	}
	var errs []error
	for _, id := range args {
		errs = append(errs, downOne(id, os.Stdout))
	}
	return errors.Join(errs...)
}

func cliStatus(id string) error {
	list := []string{id}
	if id == "" {
		if list = ids(); len(list) == 0 {
			fmt.Println("no labs")
			return nil
		}
	}
	var bad []string
	for _, id := range list {
		l, err := attach(id)
		if err != nil {
			fmt.Printf("lab %s  %s\n", id, err)
			bad = append(bad, id)
		} else if !l.status(os.Stdout) {
			bad = append(bad, id)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("not ready: %s", strings.Join(bad, " "))
	}
	return nil
}

// resolve is lab id, or the only lab there is.
func resolve(id string) (*Lab, error) {
	if id == "" {
		switch all := ids(); len(all) {
		case 0:
			return nil, errors.New("no lab is running; start one with: scripts/lab.sh up")
		case 1:
			id = all[0]
		default:
			return nil, fmt.Errorf("several labs (%s): pick one with -i ID or TDLAB_ID", strings.Join(all, " "))
		}
	}
	return attach(id)
}

// command runs a command on a lab that exists.
func (l *Lab) command(cmd string, args []string) error {
	arg, wait := "", len(args) < 2 || args[1] != "--no-wait"
	if len(args) > 0 {
		arg = args[0]
	}
	switch cmd {
	case "env":
		b, err := os.ReadFile(filepath.Join(l.Dir, "env"))
		os.Stdout.Write(b)
		return err
	case "exec":
		if len(args) == 0 {
			return errors.New("usage: exec NODE [CMD…]")
		}
		node := l.nodeName(arg)
		if len(args) == 1 {
			args = append(args, cmp.Or(os.Getenv("SHELL"), "/bin/bash"))
		}
		c, err := l.nodeCmd(context.Background(), node, args[1:]...)
		if err != nil {
			return err
		}
		return syscall.Exec(c.Path, c.Args, c.Env)
	case "docker":
		k, ok := l.hostNum(l.nodeName(arg))
		if !ok {
			return fmt.Errorf("docker: %q is not a host of lab %s (h1…h%d)", arg, l.ID, l.hosts)
		}
		c := l.dockerCmd(context.Background(), k, args[1:]...)
		return syscall.Exec(c.Path, c.Args, c.Env)
	case "etcd-kill", "etcd-start":
		k, _ := strconv.Atoi(arg)
		if cmd == "etcd-kill" {
			return report(l.KillEtcd(k), "etcd"+arg+" killed")
		}
		return report(l.restartEtcd(k, wait), "etcd"+arg+" started")
	default: // plugin-kill, plugin-start
		k, ok := l.hostNum(l.nodeName(arg))
		if !ok {
			return fmt.Errorf("no host %q: lab %s has h1…h%d", arg, l.ID, l.hosts)
		}
		if cmd == "plugin-kill" {
			return report(l.KillPlugin(k), "plugin of h"+strconv.Itoa(k)+" killed")
		}
		return report(l.restartPlugin(k, wait), "plugin of h"+strconv.Itoa(k)+" started")
	}
}

func report(err error, done string) error {
	if err == nil {
		fmt.Println(done)
	}
	return err
}

// nodeName spells a node the long way: 2 → h2.
func (l *Lab) nodeName(n string) string {
	if _, err := strconv.Atoi(n); err == nil {
		return "h" + n
	}
	return n
}

// hostNum is the number of host node, if it is one of the lab's.
func (l *Lab) hostNum(node string) (int, bool) {
	k, err := strconv.Atoi(strings.TrimPrefix(node, "h"))
	return k, strings.HasPrefix(node, "h") && err == nil && k >= 1 && k <= l.hosts
}

// checkNode checks that node is one of the lab's and its namespace exists.
func (l *Lab) checkNode(node string) error {
	_, host := l.hostNum(node)
	k, _ := strconv.Atoi(strings.TrimPrefix(node, "etcd"))
	if !host && node != "sw" && (!strings.HasPrefix(node, "etcd") || checkMember(k) != nil) {
		return fmt.Errorf("unknown node %q: want h1…h%d, 1…%[2]d, sw or etcd1…etcd%d", node, l.hosts, etcdMembers)
	}
	if _, err := os.Stat(l.nsPath(node)); err != nil {
		return fmt.Errorf("lab %s has no netns %s", l.ID, l.ns(node))
	}
	return nil
}
