package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/talkingdata/ipam/internal/etcdproc"
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

// startEtcd starts n members on loopback with data under dir.
func startEtcd(ctx context.Context, bin, dir string, n int) (*etcdproc.Cluster, error) {
	c := &etcdproc.Cluster{Bin: bin, Token: "ipambench",
		Flags: []string{"--quota-backend-bytes", strconv.Itoa(quotaBytes), "--log-level", "warn"}}
	if err := c.StartLoopback(ctx, dir, n, "http"); err != nil {
		return nil, err
	}
	return c, nil
}

// daemon is one plugin instance, spoken to through its socket like dockerd does.
type daemon struct {
	id     string // its --host-id
	proc   *testproc.Proc
	client *pluginclient.Client
}

// startDaemon runs the plugin with warn logging (info logs every call). The benchmark's pools
// have no reuse delay (initRange): a released address is free at once, as in the baseline.
func startDaemon(ctx context.Context, bin, dir string, i int, endpoints []string, prefix string) (*daemon, error) {
	id := fmt.Sprintf("bench%d", i)
	socket := filepath.Join(dir, id+".sock")
	cmd := exec.Command(bin, "--etcd-endpoints", strings.Join(endpoints, ","),
		"--etcd-prefix", prefix,
		"--host-id", id,
		"--socket", socket,
		"--data-dir", filepath.Join(dir, id+"-data"), // unused with --etcd-endpoints; never the system's
		"--log-level", "warn")
	cmd.Env = testproc.EnvWithout("IPAM_")
	// Attached: a benchmark killed with -9 must not leave daemons behind.
	p, err := testproc.Spawn("plugin "+id, filepath.Join(dir, id+".log"), cmd, false)
	if err != nil {
		return nil, err
	}
	d := &daemon{id: id, proc: p, client: pluginclient.New(socket, callTimeout)}
	if err := d.handshake(ctx); err != nil {
		d.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.Tail(logTail))
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
		case d.proc.Exited():
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
	d.proc.Stop(stopGrace)
}

func (d *daemon) mem() (memStatus, error) {
	if d.proc.Exited() {
		return memStatus{}, errors.New(d.id + " is not running")
	}
	return readMem(d.proc.Pid())
}

// userHZ is the unit of /proc/PID/stat's CPU times: USER_HZ, 100 on every Linux architecture
// Go supports.
const userHZ = 100

// cpuTime is the CPU a process has used so far, user and system, all its threads (10ms steps).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the CPU time of pid %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: fields are counted after its end.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short /proc stat %q", pid, b)
	}
	var ticks int64
	for _, s := range f[11:13] { // utime and stime, fields 14 and 15 of proc(5)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: /proc stat CPU time %q: %w", pid, s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// cpuTimes sums cpuTime over pids.
func cpuTimes(pids []int) (time.Duration, error) {
	var sum time.Duration
	for _, pid := range pids {
		t, err := cpuTime(pid)
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}
