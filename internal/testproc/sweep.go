package testproc

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

// What a harness leaves behind (dockertest's daemons, the lab) is found and removed with these:
// processes by command line, cgroup or ancestry, cgroups, and mounts under a directory.

// ProcInfo is one process of a /proc snapshot.
type ProcInfo struct {
	PPID    int
	Exited  bool   // a zombie or dead: nothing left to kill
	Cmdline string // its arguments joined by spaces
}

// Procs reads /proc; processes that vanish while it reads are left out.
func Procs() map[int]ProcInfo {
	procs := map[int]ProcInfo{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := Stat(pid)
		if !ok {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		procs[pid] = ProcInfo{PPID: ppid, Exited: Exited(state),
			Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))}
	}
	return procs
}

// Family returns the live processes among mine and their descendants. It never returns this
// process, its ancestors or init, nor what descends from mine only through them: a sweep run
// from inside what it sweeps (a lab's `exec h1 … down`) must not kill itself.
func Family(procs map[int]ProcInfo, mine map[int]bool) []int {
	keep := map[int]bool{1: true}
	for pid := os.Getpid(); pid > 1 && !keep[pid]; pid = procs[pid].PPID {
		keep[pid] = true
	}
	kids := map[int][]int{}
	for pid, p := range procs {
		kids[p.PPID] = append(kids[p.PPID], pid)
	}
	var queue, out []int
	seen := map[int]bool{}
	for pid := range mine {
		if !keep[pid] {
			queue, seen[pid] = append(queue, pid), true
		}
	}
	for len(queue) > 0 {
		pid := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if p, ok := procs[pid]; ok && !p.Exited {
			out = append(out, pid)
		}
		for _, k := range kids[pid] {
			if !seen[k] && !keep[k] {
				queue, seen[k] = append(queue, k), true
			}
		}
	}
	return out
}

// KillAll SIGKILLs what find returns until it returns nothing (a runc or shim may still fork
// while its parent dies) or timeout passes, and returns the pids it killed.
func KillAll(find func() []int, timeout time.Duration) map[int]bool {
	killed := map[int]bool{}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pids := find()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed[pid] = true
			}
		}
	}
	return killed
}

// CgroupDirs are the cgroups named name (a glob pattern): one per v1 hierarchy, or one on a v2
// host.
func CgroupDirs(name string) []string {
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	v2, _ := filepath.Glob("/sys/fs/cgroup/" + name)
	var dirs []string
	for _, d := range append(v1, v2...) {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// CgroupPids are the processes in dirs and the cgroups below them.
func CgroupPids(dirs []string) []int {
	var pids []int
	for _, top := range dirs {
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

// RemoveCgroups rmdirs the cgroups named name and those below them, deepest first. The kernel
// may hold a cgroup busy for a moment after its last process was killed, so it retries briefly.
func RemoveCgroups(name string) error {
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err = nil
		for _, top := range CgroupDirs(name) {
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

// Mounts are the mount points of this mount namespace that are dir or below it, children
// before parents.
func Mounts(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 &&
			(fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	return mounts, sc.Err()
}

// RemoveAll deletes dir. A daemon's mounts live in its private mount namespace and vanish with
// its processes; should one be visible here anyway, it is detached first so that RemoveAll
// cannot descend into someone else's files.
func RemoveAll(dir string) error {
	mounts, err := Mounts(dir)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	return os.RemoveAll(dir)
}
