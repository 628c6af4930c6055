package dockertest

import (
	"strings"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// killStrays SIGKILLs every live process that belongs to this daemon, until none is left, and
// returns how many it killed.
//
// A process belongs to the daemon when its command line names the root directory (dockerd,
// containerd, `containerd-shim-runc-v2 -address ROOT/exec/…`, docker CLI calls), when it is in
// the containers' cgroup parent, or when it descends from one of those. Shims and containers are
// not in dockerd's process group (containerd calls setsid, shims daemonize), hence the search.
func (d *Daemon) killStrays() int {
	return len(testproc.KillAll(d.strays, 10*time.Second))
}

func (d *Daemon) strays() []int {
	procs := testproc.Procs()
	mine := map[int]bool{}
	for pid, p := range procs {
		if strings.Contains(p.Cmdline, d.root+"/") {
			mine[pid] = true
		}
	}
	for _, pid := range testproc.CgroupPids(d.cgroupDirs()) {
		mine[pid] = true
	}
	return testproc.Family(procs, mine)
}

// cgroupDirs are the containers' cgroup parents.
func (d *Daemon) cgroupDirs() []string { return testproc.CgroupDirs(d.token) }

func (d *Daemon) removeCgroups() error { return testproc.RemoveCgroups(d.token) }

func (d *Daemon) removeRoot() error { return testproc.RemoveAll(d.root) }
