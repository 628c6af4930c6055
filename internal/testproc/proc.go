package testproc

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a child process whose output goes to a log file.
type Proc struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// Spawn starts cmd with stdin from /dev/null and stdout and stderr appended to log. An attached
// child gets its own process group, so that Stop also ends what it started, and dies with this
// process (Pdeathsig, see Start). A detached one gets its own session and outlives this process:
// the lab's daemons, which a later `lab down` ends, as its up command exits at once.
func Spawn(name, log string, cmd *exec.Cmd, detach bool) (*Proc, error) {
	logf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := Start(cmd); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, cmd.Path, err)
	}
	p := &Proc{Name: name, Log: log, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and, after grace, SIGKILL to the process's group, then kills whatever the
// group left behind; stopping twice is fine. It reports whether it had to kill.
func (p *Proc) Stop(grace time.Duration) (killed bool) {
	if !p.Exited() {
		killed = Terminate(p.Pid(), p.done, grace)
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	return killed
}

// Tail is the last n lines of the log, headed by its name and path.
func (p *Proc) Tail(n int) string {
	return fmt.Sprintf("%s log tail (%s):\n%s", p.Name, p.Log, Tail(p.Log, n))
}

// Stat reads pid's state and parent from /proc/PID/stat; ok is false when pid is gone.
func Stat(pid int) (state string, ppid int, ok bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
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

// Exited says whether a process in state has exited (a zombie waiting to be reaped, or dead).
func Exited(state string) bool { return state == "Z" || state == "X" }

// Alive reports whether pid is a process that has not exited.
func Alive(pid int) bool {
	state, _, ok := Stat(pid)
	return ok && !Exited(state)
}

// PidFile returns the pid a pid file names and whether that process is alive.
func PidFile(path string) (pid int, alive bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, Alive(pid)
}
