package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/talkingdata/ipam/internal/pluginclient"
	"github.com/talkingdata/ipam/internal/testproc"
)

const (
	startTimeout = 30 * time.Second // etcd's first election, a daemon's socket
	stopGrace    = 10 * time.Second // then SIGKILL to the process group
	logTail      = 20
	// quotaBytes lifts etcd's default 2 GiB quota: a 1M pool, its baseline twin and the
	// history of a full sweep come close to it (compaction frees pages but never shrinks
	// the file). 8 GiB is etcd's own recommended maximum.
	quotaBytes = 8 << 30
)

// proc is one child process in its own process group, so that stopping it also stops whatever
// it started, and so that the terminal's Ctrl-C reaches only us: we stop it in order.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

func startProc(name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a benchmark killed with -9 must not leave etcd and daemons behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, after stopGrace, SIGKILL to the whole group; stopping twice is fine.
func (p *proc) stop() {
	if p.exited() {
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL) // anything the group left behind
		return
	}
	testproc.Terminate(p.pid(), p.done, stopGrace)
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
}

func (p *proc) tail() string {
	return fmt.Sprintf("%s log tail (%s):\n%s", p.name, p.log, testproc.Tail(p.log, logTail))
}

// memStatus is a process's resident memory from /proc/PID/status, in KiB.
type memStatus struct {
	RSS, HWM int64 // VmRSS now, VmHWM its peak
}

func readMem(pid int) (memStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, fmt.Errorf("reading the memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	var m memStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return m, fmt.Errorf("pid %d: %s %q: %w", pid, k, v, err)
		}
		if k == "VmRSS" {
			m.RSS = n
		} else {
			m.HWM = n
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("reading the memory of pid %d: %w", pid, err)
	}
	return m, nil
}

// etcdCluster is the etcd of a run: members this run started, or endpoints it was given.
type etcdCluster struct {
	endpoints []string
	members   []*proc
}

func (c *etcdCluster) stop() {
	for _, m := range c.members {
		m.stop()
	}
}

// startEtcd starts n members on random loopback ports with data under dir. Ports are found by
// binding :0 and closing, so another process may take one first; then it starts over.
func startEtcd(ctx context.Context, bin, dir string, n int) (*etcdCluster, error) {
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		c, err := tryStartEtcd(ctx, bin, filepath.Join(dir, fmt.Sprintf("etcd-%d", attempt)), n)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func tryStartEtcd(ctx context.Context, bin, dir string, n int) (*etcdCluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("etcd dir: %w", err)
	}
	clients, peers := make([]string, n), make([]string, n)
	var initial []string
	for i := range n {
		c, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		p, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		clients[i], peers[i] = "http://"+c, "http://"+p
		initial = append(initial, fmt.Sprintf("m%d=%s", i+1, peers[i]))
	}
	cl := &etcdCluster{endpoints: clients}
	for i := range n {
		name := fmt.Sprintf("m%d", i+1)
		p, err := startProc("etcd "+name, filepath.Join(dir, name+".log"), testproc.EnvWithout("ETCD_"), bin,
			"--name", name,
			"--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "ipambench",
			"--max-txn-ops", "128", // the default, spelled out: the limit our transactions are built for
			"--quota-backend-bytes", strconv.Itoa(quotaBytes),
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn")
		if err != nil {
			cl.stop()
			return nil, err
		}
		cl.members = append(cl.members, p)
	}
	for i, m := range cl.members {
		if err := waitHealthy(ctx, clients[i], m); err != nil {
			cl.stop()
			return nil, fmt.Errorf("%w\n%s", err, m.tail())
		}
	}
	return cl, nil
}

// waitHealthy polls /health, which says true once the member sees a leader.
func waitHealthy(ctx context.Context, url string, p *proc) error {
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		if resp, err := hc.Get(url + "/health"); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`) {
				return nil
			}
		}
		switch {
		case p.exited():
			return fmt.Errorf("%s exited during startup", p.name)
		case ctx.Err() != nil:
			return fmt.Errorf("waiting for %s: %w", p.name, ctx.Err())
		case time.Now().After(deadline):
			return fmt.Errorf("%s at %s not healthy after %s", p.name, url, startTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// daemon is one plugin instance, spoken to through its socket like dockerd does.
type daemon struct {
	id     string // its --host-id
	proc   *proc
	client *pluginclient.Client
}

// startDaemon runs the plugin with warn logging (info logs every call). The benchmark's pools
// have no reuse delay (initRange): a released address is free at once, as in the baseline.
func startDaemon(ctx context.Context, bin, dir string, i int, endpoints []string, prefix string) (*daemon, error) {
	id := fmt.Sprintf("bench%d", i)
	socket := filepath.Join(dir, id+".sock")
	p, err := startProc("plugin "+id, filepath.Join(dir, id+".log"), testproc.EnvWithout("IPAM_"), bin,
		"--etcd-endpoints", strings.Join(endpoints, ","),
		"--etcd-prefix", prefix,
		"--host-id", id,
		"--socket", socket,
		"--data-dir", filepath.Join(dir, id+"-data"), // unused with --etcd-endpoints; never the system's
		"--log-level", "warn")
	if err != nil {
		return nil, err
	}
	d := &daemon{id: id, proc: p, client: pluginclient.New(socket, callTimeout)}
	if err := d.handshake(ctx); err != nil {
		d.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.tail())
	}
	return d, nil
}

// handshake is what dockerd does with a plugin it finds: Activate, then GetDefaultAddressSpaces.
// Activate is retried until the socket answers.
func (d *daemon) handshake(ctx context.Context) error {
	deadline := time.Now().Add(startTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := d.client.Activate(cctx)
		cancel()
		if err == nil {
			break
		}
		switch {
		case !pluginclient.IsTransport(err):
			return fmt.Errorf("activating %s: %w", d.id, err)
		case d.proc.exited():
			return fmt.Errorf("%s exited during startup", d.id)
		case ctx.Err() != nil:
			return fmt.Errorf("activating %s: %w", d.id, ctx.Err())
		case time.Now().After(deadline):
			return fmt.Errorf("%s: no socket answer after %s: %w", d.id, startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := d.client.GetDefaultAddressSpaces(cctx); err != nil {
		return fmt.Errorf("GetDefaultAddressSpaces on %s: %w", d.id, err)
	}
	return nil
}

func (d *daemon) stop() {
	d.client.Close()
	d.proc.stop()
}

func (d *daemon) mem() (memStatus, error) {
	if d.proc.exited() {
		return memStatus{}, errors.New(d.id + " is not running")
	}
	return readMem(d.proc.pid())
}
