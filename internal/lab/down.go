package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// pids are the live processes of lab id: those whose command line names its state directory
// or its namespaces and cgroups, those in its network namespaces or its containers' cgroups,
// its unfinished up, and all their descendants (containerd and the shims are not in dockerd's
// process group, and a killed up may leave children that name nothing of the lab yet).
func pids(id string) []int {
	procs := testproc.Procs()
	dir, token := stateDir(id)+"/", "tdlab-"+id+"-"
	var nets []os.FileInfo
	nsf, _ := filepath.Glob("/run/netns/" + token + "*")
	for _, f := range nsf {
		if fi, err := os.Stat(f); err == nil {
			nets = append(nets, fi)
		}
	}
	mine := map[int]bool{}
	for pid, p := range procs {
		if strings.Contains(p.Cmdline, dir) || strings.Contains(p.Cmdline, token) {
			mine[pid] = true
			continue
		}
		if fi, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/ns/net"); err == nil &&
			slices.ContainsFunc(nets, func(n os.FileInfo) bool { return os.SameFile(fi, n) }) {
			mine[pid] = true
		}
	}
	for _, pid := range testproc.CgroupPids(testproc.CgroupDirs(token + "*")) {
		mine[pid] = true
	}
	if pid, ok := livePid(filepath.Join(stateDir(id), "up.pid")); ok {
		mine[pid] = true
	}
	return testproc.Family(procs, mine)
}

// livePid reads a file of "PID STARTTIME" (up.pid, owner) and reports whether that process,
// and not a later one with its pid, is running.
func livePid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, _ := strconv.Atoi(f[0])
	start, ok := startTime(pid)
	return pid, ok && start == f[1] && testproc.Alive(pid)
}

// startTime is field 22 of /proc/PID/stat, the process's start time since boot.
func startTime(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 20 {
		return "", false
	}
	return f[19], true
}

// downOne kills everything of lab id (there is nothing to save), then deletes its namespaces,
// cgroups, mounts and state dir. It works on half-built labs and is idempotent; the error names
// what it could not remove.
func downOne(id string, w io.Writer) error {
	if err := checkID(id); err != nil {
		return err
	}
	dir, token := stateDir(id), "tdlab-"+id+"-"
	nsf, _ := filepath.Glob("/run/netns/" + token + "*")
	_, err := os.Stat(dir)
	found := err == nil || len(nsf) > 0
	killed := testproc.KillAll(func() []int { return pids(id) }, 15*time.Second)
	for _, f := range nsf {
		if exec.Command(testproc.LookTool("ip"), "netns", "delete", filepath.Base(f)).Run() != nil {
			_ = syscall.Unmount(f, syscall.MNT_DETACH)
			_ = os.Remove(f)
		}
	}
	var errs []error
	if err := testproc.RemoveCgroups(token + "*"); err != nil {
		errs = append(errs, err)
	}
	if err := testproc.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if left := leftovers(id); len(left) > 0 {
		errs = append(errs, errors.New("could not remove: "+strings.Join(left, "; ")))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s: %w", id, err)
	}
	if len(killed) == 0 && !found {
		fmt.Fprintf(w, "lab %s: nothing to remove\n", id)
	} else {
		fmt.Fprintf(w, "lab %s: down (killed %d processes)\n", id, len(killed))
	}
	return nil
}

// Leftovers lists what of the lab exists: network namespaces, processes, its directory,
// cgroups and mounts. Empty after Down.
func (l *Lab) Leftovers() []string { return leftovers(l.ID) }

func leftovers(id string) []string {
	var left []string
	token := "tdlab-" + id + "-"
	if ns, _ := filepath.Glob("/run/netns/" + token + "*"); len(ns) > 0 {
		left = append(left, fmt.Sprintf("netns %v", ns))
	}
	if _, err := os.Stat(stateDir(id)); !errors.Is(err, os.ErrNotExist) {
		left = append(left, "dir "+stateDir(id))
	}
	if cg := testproc.CgroupDirs(token + "*"); len(cg) > 0 {
		left = append(left, fmt.Sprintf("cgroups %v", cg))
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil &&
		(strings.Contains(string(b), token) || strings.Contains(string(b), stateDir(id)+"/")) {
		left = append(left, "mounts naming tdlab-"+id)
	}
	procs := testproc.Procs()
	for _, pid := range pids(id) {
		left = append(left, fmt.Sprintf("process %d: %s", pid, procs[pid].Cmdline))
	}
	return left
}

var idInPath = regexp.MustCompile(`/tdlab-([a-z0-9]{1,16})(/|-|$)`)

// ids are the labs that have anything left: a state dir, a netns, a cgroup or a process that
// names a state dir.
func ids() []string {
	set := map[string]bool{}
	dirs, _ := filepath.Glob(stateBase + "/tdlab-*")
	nss, _ := filepath.Glob("/run/netns/tdlab-*")
	for _, p := range append(append(dirs, nss...), testproc.CgroupDirs("tdlab-*")...) {
		if m := idInPath.FindStringSubmatch(p); m != nil {
			set[m[1]] = true
		}
	}
	inCmd := regexp.MustCompile(regexp.QuoteMeta(stateBase) + `/tdlab-([a-z0-9]{1,16})/`)
	for _, p := range testproc.Procs() {
		if m := inCmd.FindStringSubmatch(p.Cmdline); m != nil {
			set[m[1]] = true
		}
	}
	var out []string
	for id := range set {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// prune tears down the labs whose owner has died, and the remains of an interrupted down (no
// state dir left). A lab made by hand without an owner stays: only down removes it.
func prune(w io.Writer) error {
	var errs []error
	for _, id := range ids() {
		owner := filepath.Join(stateDir(id), "owner")
		if _, alive := livePid(owner); alive {
			continue
		}
		if _, err := os.Stat(owner); errors.Is(err, os.ErrNotExist) && dirExists(stateDir(id)) {
			continue
		}
		errs = append(errs, downOne(id, w))
	}
	return errors.Join(errs...)
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
