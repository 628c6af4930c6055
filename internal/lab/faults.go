package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// KillEtcd SIGKILLs etcd member k (1-3), as a crash would; an error if it is not running.
func (l *Lab) KillEtcd(k int) error {
	if err := checkMember(k); err != nil {
		return err
	}
	return l.kill("etcd"+strconv.Itoa(k), l.etcdPidFile(k))
}

// StartEtcd restarts etcd member k on its data dir, so it rejoins as the member it was, and
// waits (up to 30s) until it answers a quorum read; an error if it is running.
func (l *Lab) StartEtcd(k int) error { return l.restartEtcd(k, true) }

func (l *Lab) restartEtcd(k int, wait bool) error {
	if err := checkMember(k); err != nil {
		return err
	}
	if err := l.restartable("etcd"+strconv.Itoa(k), l.etcdPidFile(k)); err != nil {
		return err
	}
	c := l.etcd()
	if err := c.Spawn(k - 1); err != nil {
		return err
	}
	if err := writePid(l.etcdPidFile(k), c.Proc(k-1).Pid()); err != nil {
		return err
	}
	if !wait {
		return nil
	}
	return c.WaitHealthy(context.Background(), k-1)
}

// KillPlugin SIGKILLs host h's plugin (kill -9: it leaves its socket file behind).
func (l *Lab) KillPlugin(h int) error {
	return l.kill("plugin of h"+strconv.Itoa(l.host(h)), l.pluginPidFile(h))
}

// StartPlugin restarts host h's plugin with the flags it had, on the same socket, and waits
// (up to 20s) until it has bound it.
func (l *Lab) StartPlugin(h int) error { return l.restartPlugin(h, true) }

func (l *Lab) restartPlugin(h int, wait bool) error {
	if err := l.restartable("the plugin of h"+strconv.Itoa(l.host(h)), l.pluginPidFile(h)); err != nil {
		return err
	}
	// The daemon replaces the stale socket; a fresh one has another inode or change time.
	before, _ := os.Stat(l.PluginSocket(h))
	p, err := l.spawnPlugin(h)
	if err != nil || !wait {
		return err
	}
	return poll(20*time.Second, 20*time.Millisecond, "the plugin of h"+strconv.Itoa(h), func() (bool, error) {
		if p.Exited() {
			return false, l.exited(h, "plugin")
		}
		fi, err := os.Stat(l.PluginSocket(h))
		return err == nil && fi.Mode().Type() == os.ModeSocket && !sameSocket(before, fi), nil
	})
}

func sameSocket(a, b os.FileInfo) bool {
	if a == nil {
		return false
	}
	sa, sb := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
	return sa.Ino == sb.Ino && sa.Ctim == sb.Ctim
}

// EtcdAlive reports whether member k's process is running (not whether it is healthy).
func (l *Lab) EtcdAlive(k int) bool { return l.alive(l.etcdPidFile(k)) }

// PluginAlive reports whether host h's plugin process is running.
func (l *Lab) PluginAlive(h int) bool { return l.alive(l.pluginPidFile(h)) }

func (l *Lab) alive(pidFile string) bool {
	_, ok := testproc.PidFile(pidFile)
	return ok
}

func (l *Lab) etcdPidFile(k int) string {
	return filepath.Join(l.Dir, "etcd"+strconv.Itoa(k), "etcd.pid")
}

func (l *Lab) pluginPidFile(h int) string { return filepath.Join(l.hostDir(l.host(h)), "plugin.pid") }

// kill SIGKILLs the process of a pid file and waits until it is gone (as a zombie it is reaped
// by its parent soon).
func (l *Lab) kill(name, pidFile string) error {
	pid, ok := testproc.PidFile(pidFile)
	if !ok {
		return fmt.Errorf("lab %s: %s is not running", l.ID, name)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return poll(5*time.Second, 50*time.Millisecond, name+" (pid "+strconv.Itoa(pid)+") after SIGKILL", func() (bool, error) {
		return !testproc.Alive(pid), nil
	})
}

// restartable checks that the lab is up and the daemon of pidFile is not running.
func (l *Lab) restartable(name, pidFile string) error {
	if _, err := os.Stat(filepath.Join(l.Dir, "ready")); err != nil {
		return fmt.Errorf("lab %s is not (fully) up", l.ID)
	}
	if pid, ok := testproc.PidFile(pidFile); ok {
		return fmt.Errorf("lab %s: %s is already running (pid %d)", l.ID, name, pid)
	}
	return nil
}

func checkMember(k int) error {
	if k < 1 || k > etcdMembers {
		return errors.New("no etcd member " + strconv.Itoa(k) + ": want 1…" + strconv.Itoa(etcdMembers))
	}
	return nil
}
