package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// workflow is one row of the conformance table: fn runs it on one side,
// recording each step's outcome under a step id.
type workflow struct {
	name  string
	notOn []string // engines that lack what it needs
	needs string   // with notOn: what that is
	fn    func(w *wf)
}

// subnetsPerWorkflow is how many subnets (third octets) each workflow may use.
const subnetsPerWorkflow = 3

// runWorkflows runs every workflow on both sides, several at once.
func (c *conformance) runWorkflows() {
	for _, wk := range workflows {
		for _, e := range wk.notOn {
			checkEngineName(c.t, "workflow "+wk.name+": notOn", e)
		}
	}
	sem := make(chan struct{}, 6)
	var wg sync.WaitGroup
	for i, wk := range workflows {
		if slices.Contains(wk.notOn, c.engine) {
			c.t.Logf("not applicable on %s: %s needs %s", c.engine, wk.name, wk.needs)
			continue
		}
		for _, s := range []side{dockerSide, tdSide} {
			w := &wf{c: c, s: s, k: i * subnetsPerWorkflow, tag: fmt.Sprintf("%s%d", s.short, i)}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				began := time.Now()
				wk.fn(w)
				w.cleanup()
				c.t.Logf("%s on %s: %s", wk.name, s.name, time.Since(began).Round(100*time.Millisecond))
			}()
		}
	}
	wg.Wait()
}

// wf is one workflow on one side.
type wf struct {
	c   *conformance
	s   side
	k   int    // index of the workflow's first subnet
	tag string // prefix of its names: d3, t3

	mu   sync.Mutex
	ctrs []string
}

func (w *wf) td() bool { return w.s.name == tdSide.name }

func (w *wf) oct(j int) int { return w.s.oct + w.k + j }

// sub, ip, sub6 and ip6 name subnet j of the workflow and host offsets in it.
func (w *wf) sub(j int) string      { return fmt.Sprintf("198.18.%d.0/24", w.oct(j)) }
func (w *wf) ip(j, off int) string  { return fmt.Sprintf("198.18.%d.%d", w.oct(j), off) }
func (w *wf) sub6(j int) string     { return fmt.Sprintf("%s%x::/64", w.s.v6, w.k+j) }
func (w *wf) ip6(j, off int) string { return fmt.Sprintf("%s%x::%x", w.s.v6, w.k+j, off) }
func (w *wf) net(j int) string      { return fmt.Sprintf("%s-n%d", w.tag, j) }
func (w *wf) ctr(name string) string {
	return w.tag + "-" + name
}

func (w *wf) docker(args ...string) (string, error) { return w.c.d.Docker(args...) }

func (w *wf) set(id, result string) { w.c.record(w.s, id, result, "") }

func (w *wf) refused(id string, err error) { w.c.record(w.s, id, "refused", oneLine(err)) }

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// create runs `network create` of network j and records id: "ok" or "refused".
func (w *wf) create(id string, j int, args ...string) bool {
	if err := w.createNet(j, args...); err != nil {
		w.refused(id, err)
		return false
	}
	w.set(id, "ok")
	return true
}

// createNet runs `network create` of network j on this side's IPAM.
func (w *wf) createNet(j int, args ...string) error {
	full := append(append([]string{"network", "create"}, w.s.ipam...), args...)
	if _, err := w.docker(append(full, w.net(j))...); err != nil {
		return err
	}
	w.trackSubnets(w.net(j), args)
	return nil
}

// trackSubnets remembers a talkingdata network's subnets for checkEtcd.
func (w *wf) trackSubnets(name string, args []string) {
	if !w.td() {
		return
	}
	for i, a := range args {
		if a == "--subnet" && i+1 < len(args) {
			w.c.mu.Lock()
			w.c.tdNets[name+" "+args[i+1]] = netip.MustParsePrefix(args[i+1])
			w.c.mu.Unlock()
		}
	}
}

// run starts a sleeping container on network j.
func (w *wf) run(name string, j int, extra ...string) error {
	args := append([]string{"run", "-d", "--init", "--name", w.ctr(name), "--network", w.net(j)}, extra...)
	w.mu.Lock()
	w.ctrs = append(w.ctrs, w.ctr(name))
	w.mu.Unlock()
	_, err := w.docker(append(args, w.c.image, "sleep", "600")...)
	return err
}

// runAuto runs containers a0, a1 and a2 on network 0 with automatic
// addresses and returns their IPv4 addresses; nil, with id recorded as
// refused, when one fails.
func (w *wf) runAuto(id string) []netip.Addr {
	var addrs []netip.Addr
	for i := range 3 {
		if err := w.run(fmt.Sprint("a", i), 0); err != nil {
			w.refused(id, err)
			return nil
		}
		a, _ := w.addrs(fmt.Sprint("a", i), 0)
		addrs = append(addrs, a)
	}
	return addrs
}

// runStep runs a container for step id and records where its address is.
func (w *wf) runStep(id, name string, j int, extra ...string) {
	if err := w.run(name, j, extra...); err != nil {
		w.refused(id, err)
		return
	}
	w.set(id, "ok, "+w.where(name, j))
}

// addrs returns a container's IPv4 and IPv6 addresses on network j.
func (w *wf) addrs(name string, j int) (v4, v6 netip.Addr) {
	out, err := w.docker("inspect", "-f", `{{with index .NetworkSettings.Networks "`+w.net(j)+`"}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}`, w.ctr(name))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(out) {
		if a, err := netip.ParseAddr(f); err == nil && a.Is4() {
			v4 = a
		} else if err == nil {
			v6 = a
		}
	}
	return
}

// where describes a container's IPv4 address on network j as an offset.
func (w *wf) where(name string, j int) string {
	a, _ := w.addrs(name, j)
	return w.offset(a, j)
}

func (w *wf) offset(a netip.Addr, j int) string {
	switch {
	case !a.IsValid():
		return "no address"
	case !netip.MustParsePrefix(w.sub(j)).Contains(a):
		return "outside the subnet"
	}
	return fmt.Sprintf("offset %d", a.As4()[3])
}

// offset6 is the host offset of an address of sub6(j), or -1.
func (w *wf) offset6(a netip.Addr, j int) int {
	if !a.IsValid() || !netip.MustParsePrefix(w.sub6(j)).Contains(a) {
		return -1
	}
	b := a.As16()
	return int(b[14])<<8 | int(b[15])
}

// gateway is the IPv4 address dockerd put on network j's bridge: the
// gateway the IPAM gave.
func (w *wf) gateway(j int) netip.Addr {
	id, err := w.docker("network", "inspect", "-f", "{{.Id}}", w.net(j))
	if err != nil || len(id) < 12 {
		return netip.Addr{}
	}
	out, err := exec.Command("ip", "-n", w.c.d.NetNS(), "-o", "-4", "addr", "show", "dev", "br-"+id[:12]).Output()
	if err != nil {
		return netip.Addr{}
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "inet" && i+1 < len(f) {
			if p, err := netip.ParsePrefix(f[i+1]); err == nil {
				return p.Addr()
			}
		}
	}
	return netip.Addr{}
}

// autoClass describes automatically allocated IPv4 addresses of network j
// against the range [lo, hi] of host offsets: whether they are unique and
// in the range, and whether they were handed out in order (ascending,
// consecutive).
func (w *wf) autoClass(j int, addrs []netip.Addr, lo, hi int) string {
	seen := map[netip.Addr]bool{}
	seq := true
	for i, a := range addrs {
		if !a.IsValid() || !netip.MustParsePrefix(w.sub(j)).Contains(a) {
			return "an address outside the subnet"
		}
		off := int(a.As4()[3])
		if off < lo || off > hi {
			return fmt.Sprintf("offset %d, outside the range", off)
		}
		if seen[a] {
			return "duplicate addresses"
		}
		seen[a] = true
		if i > 0 && off != int(addrs[i-1].As4()[3])+1 {
			seq = false
		}
	}
	switch {
	case len(addrs) == 1:
		return "ok, in range" // one random pick may match Docker's by chance
	case seq:
		return fmt.Sprintf("ok, in range, in order from offset %d", addrs[0].As4()[3])
	}
	return "ok, in range, not in order"
}

// sameAddr is the outcome of a step that should keep a container's address.
// mac is a container's MAC address on network j, "" when it has none.
func (w *wf) mac(name string, j int) string {
	out, _ := w.docker("inspect", "-f", `{{with index .NetworkSettings.Networks "`+w.net(j)+`"}}{{.MacAddress}}{{end}}`, w.ctr(name))
	return out
}

// sameMAC says whether a container's MAC on network j is still before:
// LAN neighbours' ARP caches hold it.
func (w *wf) sameMAC(name string, j int, before string) string {
	switch mac := w.mac(name, j); {
	case mac == "" || before == "":
		return "no MAC"
	case mac == before:
		return "same MAC"
	}
	return "another MAC"
}

func (w *wf) sameAddr(name string, j int, before netip.Addr) string {
	a, _ := w.addrs(name, j)
	for i := 0; i < 10 && !a.IsValid(); i++ { // a restarted container may show none for a moment
		time.Sleep(200 * time.Millisecond)
		a, _ = w.addrs(name, j)
	}
	switch {
	case !a.IsValid():
		return "no address"
	case a == before:
		return "ok, same address"
	}
	return "ok, another address"
}

// killAndWait kills a --restart always container's process from the host
// and waits for dockerd to restart it; "" when it runs again.
func (w *wf) killAndWait(name string) (problem string) {
	pid, err := w.docker("inspect", "-f", "{{.State.Pid}}", w.ctr(name))
	n, _ := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return fmt.Sprintf("no pid: %v %q", err, pid)
	}
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		return fmt.Sprintf("kill %d: %v", n, err)
	}
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		last, _ = w.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}} {{.RestartCount}} {{.State.Error}}", w.ctr(name))
		f := strings.Fields(last)
		if len(f) >= 3 && f[0] == "true" && f[1] != pid && f[2] != "0" {
			return ""
		}
	}
	return "not running 30s after its process was killed: " + last
}

// cleanup removes the workflow's containers and networks.
func (w *wf) cleanup() {
	if len(w.ctrs) > 0 {
		w.docker(append([]string{"rm", "-f"}, w.ctrs...)...)
	}
	for j := range subnetsPerWorkflow {
		if _, err := w.docker("network", "inspect", w.net(j)); err == nil {
			w.docker("network", "rm", w.net(j))
		}
	}
}

// requireNamed checks that talkingdata's refusal in step id names what
// lets the user do it (an ipamctl command, a flag).
func (w *wf) requireNamed(id, want string) {
	if !w.td() {
		return
	}
	c := w.c
	c.mu.Lock()
	o, ok := c.outcomes[tdSide.name][id]
	c.mu.Unlock()
	if ok && o.result == "refused" && !strings.Contains(o.detail, want) {
		c.t.Errorf("%s: talkingdata's refusal does not name %q: %s", id, want, o.detail)
	}
}
