// Package testproc holds the small process helpers shared by the etcdtest and dockertest
// harnesses.
package testproc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	forkOnce sync.Once
	forks    chan func()
)

// Start starts cmd from an OS thread that lives as long as the test binary.
//
// The harnesses set SysProcAttr.Pdeathsig so that daemons die with a test binary that never ran
// its cleanups (a -timeout panic). But Pdeathsig fires when the *thread* that forked the child
// exits, and Go ends a thread whose goroutine exits while locked to it, which netns tests do on
// purpose. Forking from one dedicated, never-exiting thread ties the signal to the process.
func Start(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forks = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: this goroutine and its thread never end
			for f := range forks {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	forks <- func() { errc <- cmd.Start() }
	return <-errc
}

// Require skips the test when a prerequisite is missing, or fails it when CI is "true", where
// `make test` promises that nothing skips.
func Require(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf("%s; run scripts/install-test-deps.sh as root (`make test` does)", what)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Terminate sends pid SIGTERM and waits for done; after grace it kills
// pid's whole process group and waits again. It reports whether it had to
// kill. A process that is already gone is fine: done tells.
func Terminate(pid int, done <-chan struct{}, grace time.Duration) (killed bool) {
	_ = syscall.Kill(pid, syscall.SIGTERM) // may be gone already; done tells
	select {
	case <-done:
		return false
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
		return true
	}
}

// EnvWithout returns the environment minus the variables whose "NAME=value" starts with one of
// prefixes.
func EnvWithout(prefixes ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			env = append(env, kv)
		}
	}
	return env
}

// Tail returns the last n lines of a file, or a note saying why it cannot.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// InNetNS runs f on a locked OS thread switched into the network namespace at path. A socket
// belongs to the namespace it was created in, so f can make one there for the caller to use
// from anywhere. If the thread cannot be switched back it stays locked, and Go ends it with the
// goroutine.
func InNetNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testproc: %w", err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testproc: setns %s: %w", path, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("testproc: setns back: %w", err)) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// FreeLoopbackAddr returns a 127.0.0.1 address with a port nobody listens
// on now, for a server the test starts next.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	addr, err := LoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// LoopbackAddr is FreeLoopbackAddr for programs that are not tests. Another process may take
// the port before the caller binds it: retry on "address already in use". It never returns an
// address twice in one process: the kernel may offer a port it just closed again, and an etcd
// member given the same port for its client and peer URLs cannot start.
func LoopbackAddr() (string, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("finding a free loopback port: %w", err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr, nil
		}
	}
	return "", errors.New("finding a free loopback port: the kernel offered only ports handed out already")
}

// handedOut are the addresses LoopbackAddr returned.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// LookTool finds a program on PATH or in the sbin directories a non-login root PATH may lack,
// or returns "". For docker it prefers Debian's /usr/bin/docker, which matches Debian's dockerd,
// over a newer client that may come first on PATH.
func LookTool(name string) string {
	if name == "docker" {
		if _, err := os.Stat("/usr/bin/docker"); err == nil {
			return "/usr/bin/docker"
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
