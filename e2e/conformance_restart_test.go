package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
)

// restartCtr is a container that lives through the dockerd restarts.
type restartCtr struct {
	name   string
	always bool // --restart always: dockerd starts it again itself
	ip     int  // --ip at this host offset; 0: an automatic address
}

// restartCtrs: the fixed addresses lie outside the --ip-range, where no
// automatic pick can take them while their containers are down (on
// talkingdata they are seeded for --ip with ipamctl init-range).
var restartCtrs = []restartCtr{
	{name: "always-ip", always: true, ip: 100},
	{name: "ip", ip: 101},
	{name: "always-auto", always: true},
	{name: "auto"},
}

func (rc restartCtr) args(w *wf) []string {
	var args []string
	if rc.always {
		args = append(args, "--restart", "always")
	}
	if rc.ip != 0 {
		args = append(args, "--ip", w.ip(0, rc.ip))
	}
	return args
}

// dockerdRestarts are the ways dockerd goes down and comes back; step
// names the outcomes observed after it, and start-after-<step> those of
// starting what it left stopped.
var dockerdRestarts = []struct {
	liveRestore bool
	signal      syscall.Signal
	step        string
}{
	{false, syscall.SIGTERM, "dockerd-restart"},
	{true, syscall.SIGTERM, "dockerd-live-restore"},
	{false, syscall.SIGKILL, "dockerd-kill9"},
}

// daemonRestarts goes through dockerdRestarts, each shared by both IPAMs.
// After each one, every container's state and address is an outcome, and
// etcd must hold exactly the running containers' addresses.
func (c *conformance) daemonRestarts() {
	t := c.t
	began := time.Now()
	k := len(workflows) * subnetsPerWorkflow
	var ws []*wf
	for _, s := range []side{dockerSide, tdSide} {
		ws = append(ws, &wf{c: c, s: s, k: k, tag: s.short + "r"})
	}
	each := func(f func(w *wf)) {
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Add(1)
			go func() { defer wg.Done(); f(w) }()
		}
		wg.Wait()
	}
	// last is each container's address when it last ran: "same address"
	// compares with it.
	last := map[string]netip.Addr{}
	var mu sync.Mutex
	remember := func(w *wf, rc restartCtr) {
		a, _ := w.addrs(rc.name, 0)
		mu.Lock()
		last[w.s.name+"/"+rc.name] = a
		mu.Unlock()
	}
	remembered := func(w *wf, rc restartCtr) netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		return last[w.s.name+"/"+rc.name]
	}
	each(func(w *wf) {
		if !w.create("create-restarts", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, rangeLo)+"/25", "--gateway", w.ip(0, 1)) {
			return
		}
		for _, rc := range restartCtrs {
			if rc.ip != 0 && w.td() {
				w.ipamctl("init-range", "--subnet", w.sub(0), "--range", w.ip(0, rc.ip))
			}
		}
		for _, rc := range restartCtrs {
			if err := w.run(rc.name, 0, rc.args(w)...); err != nil {
				w.refused("restarts-run/"+rc.name, err)
				continue
			}
			a, _ := w.addrs(rc.name, 0)
			if rc.ip != 0 {
				w.set("restarts-run/"+rc.name, "ok, "+w.offset(a, 0))
			} else {
				w.set("restarts-run/"+rc.name, w.autoClass(0, []netip.Addr{a}, rangeLo, rangeHi))
			}
			remember(w, rc)
		}
	})
	c.checkEtcd("before the dockerd restarts")

	// observe records every container's state after event, once the
	// --restart always ones run again (or 30 s passed).
	observe := func(event string) {
		deadline := time.Now().Add(30 * time.Second)
		each(func(w *wf) {
			for _, rc := range restartCtrs {
				for rc.always && time.Now().Before(deadline) {
					if out, _ := w.docker("inspect", "-f", "{{.State.Running}}", w.ctr(rc.name)); out == "true" {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
		time.Sleep(time.Second) // let dockerd finish what it does at start
		each(func(w *wf) {
			for _, rc := range restartCtrs {
				out, err := w.docker("inspect", "-f", "{{.State.Running}} {{.State.Error}}", w.ctr(rc.name))
				running, stateErr, _ := strings.Cut(out, " ")
				switch {
				case err != nil:
					w.c.record(w.s, event+"/"+rc.name, "gone", oneLine(err))
				case running != "true":
					w.c.record(w.s, event+"/"+rc.name, "not running", stateErr)
				default:
					w.set(event+"/"+rc.name, "running, "+strings.TrimPrefix(w.sameAddr(rc.name, 0, remembered(w, rc)), "ok, "))
					remember(w, rc)
				}
			}
		})
		c.checkEtcd("after " + event)
		t.Logf("%s observed after %s", event, time.Since(began).Round(100*time.Millisecond))
	}
	// startStopped starts what a restart left stopped, as a user would.
	startStopped := func(event string) {
		each(func(w *wf) {
			for _, rc := range restartCtrs {
				if out, _ := w.docker("inspect", "-f", "{{.State.Running}}", w.ctr(rc.name)); out == "true" {
					continue
				}
				if _, err := w.docker("start", w.ctr(rc.name)); err != nil {
					w.refused(event+"/"+rc.name, err)
					continue
				}
				w.set(event+"/"+rc.name, w.sameAddr(rc.name, 0, remembered(w, rc)))
				remember(w, rc)
			}
		})
	}

	for _, r := range dockerdRestarts {
		c.d.SetDaemonConfig(t, daemonConfig(r.liveRestore))
		c.d.Reload(t)
		waitLiveRestore(c, r.liveRestore)
		c.d.StopDaemonOnly(t, r.signal)
		c.d.StartAgain(t)
		observe(r.step)
		startStopped("start-after-" + r.step)
	}
	c.checkEtcd("after starting the stopped containers")

	each(func(w *wf) { w.cleanup() })
	t.Logf("dockerd restarts took %s", time.Since(began).Round(100*time.Millisecond))
}

// waitLiveRestore waits until `docker info` reports live-restore as want
// after a reload.
func waitLiveRestore(c *conformance, want bool) {
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if out, _ = c.d.Docker("info", "-f", "{{.LiveRestoreEnabled}}"); out == fmt.Sprint(want) {
			return
		}
	}
	c.t.Fatalf("live-restore is %q after SIGHUP, want %v\n%s", out, want, c.d.LogTail(20))
}
