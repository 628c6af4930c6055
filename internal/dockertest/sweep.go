package dockertest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// killStrays SIGKILLs every live process that belongs to this daemon, until none is left (a
// runc or shim may still fork while its parent dies), and returns how many it killed.
//
// A process belongs to the daemon when its command line names the root directory (dockerd,
// containerd, `containerd-shim-runc-v2 -address ROOT/exec/…`, docker CLI calls), when it is in
// the containers' cgroup parent, or when it descends from one of those. Shims and containers are
// not in dockerd's process group (containerd calls setsid, shims daemonize), hence the search.
func (d *Daemon) killStrays() int {
	killed := map[int]bool{}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pids := d.strays()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed[pid] = true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return len(killed)
}

type procInfo struct {
	ppid    int
	zombie  bool // exited, waiting to be reaped: nothing left to kill
	cmdline string
}

func (d *Daemon) strays() []int {
	procs := listProcs()
	mine := map[int]bool{}
	needle := d.root + "/"
	for pid, p := range procs {
		if strings.Contains(p.cmdline, needle) {
			mine[pid] = true
		}
	}
	for _, pid := range d.cgroupPids() {
		mine[pid] = true
	}
	for changed := true; changed; { // add descendants until nothing changes
		changed = false
		for pid, p := range procs {
			if !mine[pid] && mine[p.ppid] {
				mine[pid], changed = true, true
			}
		}
	}
	var out []int
	for pid := range mine {
		if p, ok := procs[pid]; ok && !p.zombie && pid != os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

// listProcs reads /proc; processes that vanish while it reads are skipped.
func listProcs() map[int]procInfo {
	procs := map[int]procInfo{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := procStat(pid)
		if !ok {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		procs[pid] = procInfo{
			ppid:    ppid,
			zombie:  exited(state),
			cmdline: strings.ReplaceAll(string(cmdline), "\x00", " "),
		}
	}
	return procs
}

// procStat reads pid's state and parent from /proc; ok is false when pid is gone.
func procStat(pid int) (state string, ppid int, ok bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	// "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the
	// last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return "", 0, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 2 {
		return "", 0, false
	}
	ppid, _ = strconv.Atoi(fields[1])
	return fields[0], ppid, true
}

// exited says whether a process in state has exited (a zombie waiting to be reaped, or dead).
func exited(state string) bool { return state == "Z" || state == "X" }

// alive reports whether pid is a process that has not exited.
func alive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && !exited(state)
}

// cgroupDirs are the containers' cgroup parents: one per v1 hierarchy, or one on a v2 host.
func (d *Daemon) cgroupDirs() []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + d.token)
	if fi, err := os.Stat("/sys/fs/cgroup/" + d.token); err == nil && fi.IsDir() {
		dirs = append(dirs, "/sys/fs/cgroup/"+d.token)
	}
	return dirs
}

func (d *Daemon) cgroupPids() []int {
	var pids []int
	for _, top := range d.cgroupDirs() {
		_ = filepath.WalkDir(top, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil // a cgroup removed mid-walk is fine
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroups rmdirs the cgroup parents, deepest first. The kernel may hold a cgroup busy for
// a moment after its last process was killed, so it retries briefly.
func (d *Daemon) removeCgroups() error {
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err = nil
		for _, top := range d.cgroupDirs() {
			var dirs []string
			_ = filepath.WalkDir(top, func(path string, e fs.DirEntry, werr error) error {
				if werr == nil && e.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- { // WalkDir lists parents before children
				if rerr := os.Remove(dirs[i]); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					err = fmt.Errorf("remove cgroup: %w", rerr)
				}
			}
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// removeRoot deletes the daemon's directory. dockerd's mounts live in its private mount
// namespace and vanish with its processes; should one be visible here anyway, it is detached
// first so RemoveAll cannot descend into someone else's files.
func (d *Daemon) removeRoot() error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 &&
			(fields[4] == d.root || strings.HasPrefix(fields[4], d.root+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	sort.Sort(sort.Reverse(sort.StringSlice(mounts))) // children before parents
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	return os.RemoveAll(d.root)
}
