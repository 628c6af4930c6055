package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
)

// rangeLo and rangeHi bound the --ip-range 128/25 most workflows use.
const rangeLo, rangeHi = 128, 254

// workflows: each uses subnets k..k+2 of its side (see wf.sub).
var workflows = []workflow{
	{name: "network create without --subnet, or with 0.0.0.0/24", fn: func(w *wf) {
		w.create("create-no-subnet", 0)
		w.requireNamed("create-no-subnet", "--subnet")
		// dockerd 29 reads 0.0.0.0/24 as "a /24 of the default address
		// pools" (moby#50114), older ones as that very subnet; inhibit_ipv4
		// keeps 0.0.0.1 off the bridge.
		const id = "create-unspecified-subnet"
		if err := w.createNet(1, "--subnet", "0.0.0.0/24", "-o", "com.docker.network.bridge.inhibit_ipv4=true"); err != nil {
			w.refused(id, err)
		} else {
			out, _ := w.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", w.net(1))
			switch p, err := netip.ParsePrefix(out); {
			case err == nil && p.Addr().IsUnspecified():
				w.set(id, "ok, subnet "+out+" as given")
			case err == nil && dockerPools.Contains(p.Addr()):
				w.set(id, fmt.Sprintf("ok, a /%d of the default address pools", p.Bits()))
			default:
				w.set(id, fmt.Sprintf("ok, subnet %q", out))
			}
		}
		w.requireNamed(id, "the LAN's own subnet")
	}},
	{name: "network create --subnet", fn: func(w *wf) {
		if !w.create("create-subnet", 0, "--subnet", w.sub(0)) {
			return
		}
		// Where the gateway lands without --gateway is compared in
		// "network create --ip-range"; here it must be in the subnet.
		if gw := w.gateway(0); gw.IsValid() && netip.MustParsePrefix(w.sub(0)).Contains(gw) {
			w.set("gateway-subnet", "in the subnet")
		} else {
			w.set("gateway-subnet", fmt.Sprintf("bridge address %v", gw))
		}
		addrs := w.runAuto("run-auto-subnet")
		if addrs == nil {
			return
		}
		class := w.autoClass(0, addrs, 1, 254)
		if strings.HasPrefix(class, "ok") {
			class = "ok, unique, in the subnet" // the order is compared in run-auto
		}
		w.set("run-auto-subnet", class)
	}},
	{name: "network create --ip-range, automatic addresses", fn: func(w *wf) {
		if !w.create("create-ip-range", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25") {
			return
		}
		// Two networks alike: a random pick lands on the range's first
		// addresses in both only once in some 4000 runs.
		var where []string
		for j := range 2 {
			if j == 1 && !w.create("create-ip-range-2", 1, "--subnet", w.sub(1), "--ip-range", w.ip(1, 128)+"/25") {
				return
			}
			switch off := w.offset(w.gateway(j), j); {
			case off == "offset 1":
				where = append(where, "first address of the subnet")
			case off == "offset 128" || off == "offset 129":
				where = append(where, "first address of the range")
			case strings.HasPrefix(off, "offset"):
				where = append(where, "another address of the range")
			default:
				where = append(where, off)
			}
		}
		if where[0] == where[1] {
			w.set("gateway-auto", where[0])
		} else {
			w.set("gateway-auto", strings.Join(where, ", then "))
		}
		addrs := w.runAuto("run-auto")
		if addrs == nil {
			return
		}
		w.set("run-auto", w.autoClass(0, addrs, rangeLo, rangeHi))
		// An automatic address released and asked for again at once.
		if _, err := w.docker("restart", "-t", "1", w.ctr("a0")); err != nil {
			w.refused("restart-auto", err)
			return
		}
		w.set("restart-auto", w.sameAddr("a0", 0, addrs[0]))
	}},
	{name: "docker run --ip", fn: func(w *wf) {
		if !w.create("create-gateway", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1)) {
			return
		}
		w.set("gateway-given", w.offset(w.gateway(0), 0))
		w.runStep("run-ip-in-range", "in", 0, "--ip", w.ip(0, 200))
		w.runStep("run-ip-outside-range", "out", 0, "--ip", w.ip(0, 20))
		w.requireNamed("run-ip-outside-range", "ipamctl init-range")
		w.runStep("run-ip-gateway", "gw", 0, "--ip", w.ip(0, 1))
		w.runStep("run-ip-network", "net", 0, "--ip", w.ip(0, 0))
		w.runStep("run-ip-broadcast", "bcast", 0, "--ip", w.ip(0, 255))
		w.runStep("run-ip-duplicate", "dup", 0, "--ip", w.ip(0, 200))
		w.runStep("run-ip-other-subnet", "other", 0, "--ip", w.ip(1, 5))
	}},
	{name: "network create --aux-address", fn: func(w *wf) {
		if !w.create("create-aux", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1),
			"--aux-address", "router="+w.ip(0, 254), "--aux-address", "outside="+w.ip(0, 10)) {
			return
		}
		w.runStep("run-ip-aux-in-range", "auxin", 0, "--ip", w.ip(0, 254))
		w.runStep("run-ip-aux-outside-range", "auxout", 0, "--ip", w.ip(0, 10))
	}},
	{name: "restart, stop/start, rm+run, --restart always of a static address", fn: func(w *wf) {
		if !w.create("create-static", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1)) {
			return
		}
		fixed := netip.MustParseAddr(w.ip(0, 150))
		w.runStep("static-run", "s", 0, "--ip", fixed.String())
		mac := w.mac("s", 0)
		if _, err := w.docker("restart", "-t", "1", w.ctr("s")); err != nil {
			w.refused("static-restart", err)
		} else {
			w.set("static-restart", w.sameAddr("s", 0, fixed))
			w.set("static-restart-mac", w.sameMAC("s", 0, mac))
		}
		if _, err := w.docker("stop", "-t", "1", w.ctr("s")); err != nil {
			w.refused("static-stop-start", err)
		} else if _, err := w.docker("start", w.ctr("s")); err != nil {
			w.refused("static-stop-start", err)
		} else {
			w.set("static-stop-start", w.sameAddr("s", 0, fixed))
		}
		w.docker("rm", "-f", w.ctr("s"))
		w.runStep("static-rm-run", "s2", 0, "--ip", fixed.String())

		w.runStep("static-always-run", "always", 0, "--restart", "always", "--ip", w.ip(0, 151))
		if p := w.killAndWait("always"); p != "" {
			w.c.record(w.s, "static-always-killed", "not restarted", p)
		} else {
			w.set("static-always-killed", "restarted, "+w.sameAddr("always", 0, netip.MustParseAddr(w.ip(0, 151))))
		}
		if err := w.run("autoalways", 0, "--restart", "always"); err != nil {
			w.refused("auto-always-run", err)
			return
		}
		before, _ := w.addrs("autoalways", 0)
		w.set("auto-always-run", w.autoClass(0, []netip.Addr{before}, rangeLo, rangeHi))
		if p := w.killAndWait("autoalways"); p != "" {
			w.c.record(w.s, "auto-always-killed", "not restarted", p)
		} else {
			w.set("auto-always-killed", "restarted, "+w.sameAddr("autoalways", 0, before))
		}
	}},
	{name: "network connect, disconnect, connect --ip", fn: func(w *wf) {
		if !w.create("create-connect-base", 0, "--subnet", w.sub(0)) ||
			!w.create("create-connect", 1, "--subnet", w.sub(1), "--ip-range", w.ip(1, 128)+"/25", "--gateway", w.ip(1, 1)) {
			return
		}
		if err := w.run("c", 0); err != nil {
			w.refused("connect-auto", err)
			return
		}
		step := func(id string, args ...string) bool {
			if _, err := w.docker(args...); err != nil {
				w.refused(id, err)
				return false
			}
			return true
		}
		// The fixed address first, so no random pick takes it.
		if step("connect-ip", "network", "connect", "--ip", w.ip(1, 170), w.net(1), w.ctr("c")) {
			w.set("connect-ip", "ok, "+w.where("c", 1))
		}
		if step("disconnect", "network", "disconnect", w.net(1), w.ctr("c")) {
			w.set("disconnect", "ok")
		}
		if step("reconnect-ip", "network", "connect", "--ip", w.ip(1, 170), w.net(1), w.ctr("c")) {
			w.set("reconnect-ip", "ok, "+w.where("c", 1))
		}
		w.docker("network", "disconnect", w.net(1), w.ctr("c"))
		if step("connect-auto", "network", "connect", w.net(1), w.ctr("c")) {
			a, _ := w.addrs("c", 1)
			w.set("connect-auto", w.autoClass(1, []netip.Addr{a}, rangeLo, rangeHi))
		}
		w.docker("network", "disconnect", w.net(1), w.ctr("c"))
		if step("connect-ip-outside-range", "network", "connect", "--ip", w.ip(1, 30), w.net(1), w.ctr("c")) {
			w.set("connect-ip-outside-range", "ok, "+w.where("c", 1))
		}
		w.requireNamed("connect-ip-outside-range", "ipamctl init-range")
	}},
	{name: "network rm in use, and after", fn: func(w *wf) {
		args := []string{"--subnet", w.sub(0), "--ip-range", w.ip(0, 128) + "/25", "--gateway", w.ip(0, 1)}
		if !w.create("create-rm", 0, args...) {
			return
		}
		w.runStep("rm-run", "c", 0, "--ip", w.ip(0, 140))
		if _, err := w.docker("network", "rm", w.net(0)); err != nil {
			w.refused("network-rm-in-use", err)
		} else {
			w.set("network-rm-in-use", "ok")
		}
		w.docker("rm", "-f", w.ctr("c"))
		if _, err := w.docker("network", "rm", w.net(0)); err != nil {
			w.refused("network-rm", err)
		} else {
			w.set("network-rm", "ok")
		}
		if w.create("network-recreate", 0, args...) {
			w.set("network-recreate-gateway", w.offset(w.gateway(0), 0))
			w.runStep("network-recreate-run", "c2", 0, "--ip", w.ip(0, 141))
		}
	}},
	{name: "dual stack", fn: func(w *wf) {
		// Gateways given, so no random one takes an address asked for below.
		if !w.create("create-dual-stack", 0, "--ipv6", "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1),
			"--subnet", w.sub6(0), "--ip-range", w.ip6(0, 0x100)+"/120", "--gateway", w.ip6(0, 1)) {
			return
		}
		// First, with a fixed IPv4 address, so no automatic pick takes it
		// and the one dockerd keeps is known.
		kept := netip.MustParseAddr(w.ip(0, 200))
		w.runStep6("run-ip6-outside-range", "out6", 0, 0x20, "--ip", kept.String())
		w.requireNamed("run-ip6-outside-range", "ipamctl init-range")
		w.runStep6("run-ip6-in-range", "in6", 0, 0x1a0)
		if err := w.run("a", 0); err != nil {
			w.refused("run-dual-auto", err)
		} else {
			v4, v6 := w.addrs("a", 0)
			o6 := w.offset6(v6, 0)
			w.set("run-dual-auto", fmt.Sprintf("%s; IPv6 in range: %v", w.autoClass(0, []netip.Addr{v4}, rangeLo, rangeHi), o6 >= 0x100 && o6 <= 0x1ff))
		}
		w.docker("rm", "-f", w.ctr("out6"))
		w.runStep("run-ip-after-ip6-refusal", "again", 0, "--ip", kept.String())
		w.releaseKept(kept, "in6", "a", "again")
	}},
	{name: "IPv6 without --ip-range or without a subnet", fn: func(w *wf) {
		w.create("create-ipv6-no-range", 0, "--ipv6", "--subnet", w.sub(0), "--subnet", w.sub6(0))
		w.requireNamed("create-ipv6-no-range", "--ip-range")
		w.create("create-ipv6-no-subnet", 1, "--ipv6", "--subnet", w.sub(1))
		w.requireNamed("create-ipv6-no-subnet", "--subnet")
	}},
	{name: "IPv6-only network", notOn: []string{"20.10", "26.1"}, needs: "--ipv4=false (dockerd 28)", fn: func(w *wf) {
		if !w.create("create-ipv6-only", 0, "--ipv4=false", "--ipv6", "--subnet", w.sub6(0), "--ip-range", w.ip6(0, 0x100)+"/120") {
			return
		}
		w.runStep6("run-ipv6-only-ip6", "in6", 0, 0x1b0)
		if err := w.run("a", 0); err != nil {
			w.refused("run-ipv6-only", err)
			return
		}
		v4, v6 := w.addrs("a", 0)
		o6 := w.offset6(v6, 0)
		w.set("run-ipv6-only", fmt.Sprintf("IPv4: %v, IPv6 in range: %v", v4.IsValid(), o6 >= 0x100 && o6 <= 0x1ff))
	}},
	{name: "--internal network", fn: func(w *wf) {
		if !w.create("create-internal", 0, "--internal", "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1)) {
			return
		}
		w.runStep("run-internal-ip", "b", 0, "--ip", w.ip(0, 222)) // before a random pick can take it
		if err := w.run("a", 0); err != nil {
			w.refused("run-internal", err)
			return
		}
		a, _ := w.addrs("a", 0)
		w.set("run-internal", w.autoClass(0, []netip.Addr{a}, rangeLo, rangeHi))
	}},
	{name: "20 concurrent docker run", fn: func(w *wf) {
		if !w.create("create-concurrent", 0, "--subnet", w.sub(0), "--ip-range", w.ip(0, 128)+"/25", "--gateway", w.ip(0, 1)) {
			return
		}
		const n = 20
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = w.run(fmt.Sprint("c", i), 0) }()
		}
		wg.Wait()
		seen := map[netip.Addr]bool{}
		var failed []string
		for i := range n {
			a, _ := w.addrs(fmt.Sprint("c", i), 0)
			off := -1
			if a.IsValid() {
				off = int(a.As4()[3])
			}
			switch {
			case errs[i] != nil:
				failed = append(failed, oneLine(errs[i]))
			case off < rangeLo || off > rangeHi || seen[a]:
				failed = append(failed, fmt.Sprintf("c%d got %s", i, a))
			}
			seen[a] = true
		}
		if len(failed) > 0 {
			w.c.record(w.s, "concurrent-run", fmt.Sprintf("%d of %d failed", len(failed), n), strings.Join(failed, "; "))
		} else {
			w.set("concurrent-run", fmt.Sprintf("ok, %d unique addresses in the range", n))
		}
	}},
	{name: "compose up --force-recreate with ipv4_address", fn: wfCompose},
}

// runStep6 runs a container with --ip6 at offset off of sub6(j).
func (w *wf) runStep6(id, name string, j, off int, extra ...string) {
	if err := w.run(name, j, append([]string{"--ip6", w.ip6(j, off)}, extra...)...); err != nil {
		w.refused(id, err)
		return
	}
	_, v6 := w.addrs(name, j)
	w.set(id, fmt.Sprintf("ok, IPv6 offset %#x", w.offset6(v6, j)))
}

// wfCompose recreates a compose service with a fixed ipv4_address.
func wfCompose(w *wf) {
	fixed := netip.MustParseAddr(w.ip(0, 180))
	driver := "default"
	if w.td() {
		driver = "talkingdata"
	}
	yml := fmt.Sprintf(`version: "2.4"
services:
  app:
    image: %s
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    networks:
      n:
        ipv4_address: %s
networks:
  n:
    ipam:
      driver: %s
      config:
        - subnet: %s
          ip_range: %s/25
          gateway: %s
`, w.c.image, fixed, driver, w.sub(0), w.ip(0, 128), w.ip(0, 1))
	dir := w.c.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "compose.yml"), []byte(yml), 0o644); err != nil {
		w.c.t.Error(err)
		return
	}
	proj := w.tag + "c"
	compose := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, w.c.compose, append([]string{"-f", filepath.Join(dir, "compose.yml"), "-p", proj}, args...)...)
		cmd.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_HOST="+w.c.d.Host(), "DOCKER_CONFIG="+dir+"/cli")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", w.c.compose, strings.Join(args, " "), err, out)
		}
		return nil
	}
	defer compose("down", "-t", "1")
	w.trackSubnets(proj+"_n", []string{"--subnet", w.sub(0)})
	id := func() string {
		out, _ := w.docker("ps", "-q", "--filter", "label=com.docker.compose.project="+proj)
		return out
	}
	addr := func() netip.Addr {
		out, _ := w.docker("inspect", "-f", `{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`, id())
		a, _ := netip.ParseAddr(strings.TrimSpace(out))
		return a
	}
	if err := compose("up", "-d"); err != nil {
		if !w.td() { // refused on both sides, the compare would pass
			w.c.t.Errorf("compose does not work on %s with Docker's own IPAM: %v", w.c.engine, err)
		}
		w.refused("compose-up", err)
		return
	}
	w.set("compose-up", "ok")
	w.set("compose-first", "ok, "+w.offset(addr(), 0))
	first := id()
	if err := compose("up", "-d", "--force-recreate"); err != nil {
		w.refused("compose-recreate", err)
		return
	}
	if id() == first {
		w.set("compose-recreate", "not recreated")
		return
	}
	w.set("compose-recreate", "ok, "+w.offset(addr(), 0))
}

// releaseKept checks what dockerd did with kept, the IPv4 address of a
// dual-stack run whose IPv6 request talkingdata refused: it never releases
// it (libnetwork's assignAddress returns before the caller defers the
// release), so etcd must hold exactly that address beyond those of the
// running containers — the orphan `ipamctl gc` exists for. It is released
// here with `ipamctl release`, so the end checks see no other leak.
func (w *wf) releaseKept(kept netip.Addr, running ...string) {
	if !w.td() {
		return
	}
	have := map[netip.Addr]bool{}
	for _, name := range running {
		a, _ := w.addrs(name, 0)
		have[a] = true
	}
	subnet := netip.MustParsePrefix(w.sub(0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	used, err := w.c.store.Used(ctx, subnet)
	if err != nil {
		w.c.t.Error(err)
		return
	}
	var held []netip.Addr
	for _, u := range used {
		if u.Allocation.Kind == pool.KindContainer && !have[u.Addr] {
			held = append(held, u.Addr)
		}
	}
	want := []netip.Addr{kept}
	if have[kept] { // dockerd released it: run-ip-after-ip6-refusal shows that
		want = nil
	}
	if !slices.Equal(held, want) {
		w.c.t.Errorf("etcd holds %v of %s for no running container, want %v (what dockerd kept of the refused dual-stack run)", held, subnet, want)
	}
	if !slices.Contains(held, kept) {
		return
	}
	w.c.t.Logf("dockerd %s kept %s after the IPv6 refusal: released with ipamctl release", w.c.engine, kept)
	w.ipamctl("release", subnet.String(), kept.String())
}

// ipamctl runs ipamctl as the plugin's host against the test's etcd; an
// error fails the test.
func (w *wf) ipamctl(args ...string) {
	if _, err := ipamctlAs(w.c.t, conformanceHost, w.c.etcd, w.c.d, args...); err != nil {
		w.c.t.Error(err)
	}
}
