package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/lab"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
)

// TestStickyOnDocker29: on a network created with --ipam-opt
// talkingdata.sticky=name, Docker 29 sends each container's name, and the
// name keeps its address: docker rm -f db && docker run --name db gets it
// back on the same host and on another (two dockerds, each with its own
// plugin, sharing one etcd); a second db while one runs is refused naming
// the holder; two hosts starting a new name at once give it to one;
// docker compose up --force-recreate keeps every service's address.
func TestStickyOnDocker29(t *testing.T) {
	engine := dockertest.LookupEngine(t, "29")
	etcd := etcdtest.Start(t)
	const (
		stickySubnet = "198.18.4.0/24"
		stickyRange  = "198.18.4.128/25"
	)
	type dockerHost struct {
		d     *dockertest.Daemon
		image string
	}
	var hosts []dockerHost
	for i, id := range []string{"h1", "h2"} {
		dir := t.TempDir()
		startPlugin(t, dir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", id)
		d := dockertest.Start(t, dockertest.Options{PluginDir: dir, Engine: engine})
		d.MustDocker(t, "network", "create", "-d", "bridge", "--ipam-driver", "talkingdata", "--ipam-opt", "talkingdata.sticky=name",
			"--subnet", stickySubnet, "--ip-range", stickyRange, "--gateway", []string{"198.18.4.1", "198.18.4.2"}[i],
			"-o", "com.docker.network.bridge.name=tdsticky0", netName)
		hosts = append(hosts, dockerHost{d, d.ImportBusybox(t)})
	}
	run := func(h dockerHost, name string) (string, error) {
		return h.d.Docker("run", "-d", "--name", name, "--network", netName, h.image, "sleep", "600")
	}
	mustRun := func(h dockerHost, name string) netip.Addr {
		t.Helper()
		if out, err := run(h, name); err != nil {
			t.Fatalf("docker run --name %s: %v %s", name, err, out)
		}
		a, _ := inspect(t, h.d, name)
		return a
	}
	h1, h2 := hosts[0], hosts[1]

	db := mustRun(h1, "db")
	h1.d.MustDocker(t, "rm", "-f", "db")
	if again := mustRun(h1, "db"); again != db {
		t.Fatalf("db recreated on the same host got %s, want %s", again, db)
	}
	if out, err := run(h2, "db"); err == nil || !strings.Contains(out+err.Error(), `bound to name "db"`) {
		t.Fatalf("a second db on another host while the first runs: %v %s; want a refusal naming the holder", err, out)
	}
	h2.d.Docker("rm", "-f", "db")
	h1.d.MustDocker(t, "rm", "-f", "db")
	if moved := mustRun(h2, "db"); moved != db {
		t.Fatalf("db started on another host got %s, want %s", moved, db)
	}

	// Two hosts start web at once: exactly one gets it.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, h := range hosts {
		wg.Go(func() { _, errs[i] = run(h, "web") })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("two hosts starting web at once: %v; want exactly one to succeed", errs)
	}

	// docker compose up --force-recreate keeps every service's address
	// (compose names containers project-service-N: stable by themselves).
	yml := fmt.Sprintf("services:\n  app:\n    image: %s\n    command: [\"sleep\", \"600\"]\n    init: true\n    stop_grace_period: 1s\n    networks: [n]\n  cache:\n    image: %s\n    command: [\"sleep\", \"600\"]\n    init: true\n    stop_grace_period: 1s\n    networks: [n]\nnetworks:\n  n:\n    name: %s\n    external: true\n", h1.image, h1.image, netName)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "compose.yml"), []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) {
		t.Helper()
		cmd := exec.Command(engine.Compose, append([]string{"-f", filepath.Join(dir, "compose.yml"), "-p", "st"}, args...)...)
		cmd.Env = append(testproc.EnvWithout("DOCKER_"), "DOCKER_HOST="+h1.d.Host(), "DOCKER_CONFIG="+dir+"/cli")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("compose %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	services := func() map[string]netip.Addr {
		t.Helper()
		out := map[string]netip.Addr{}
		for _, c := range []string{"st-app-1", "st-cache-1"} {
			out[c], _ = inspect(t, h1.d, c)
		}
		return out
	}
	compose("up", "-d")
	t.Cleanup(func() { compose("down", "-t", "1") })
	before := services()
	compose("up", "-d", "--force-recreate")
	if after := services(); !maps.Equal(before, after) {
		t.Fatalf("compose up --force-recreate: addresses %v, before %v", after, before)
	}

	store := etcdstore.New(etcd.Client(t), etcdstore.DefaultPrefix)
	snap, err := store.Snapshot(t.Context(), netip.MustParsePrefix(stickySubnet))
	if err != nil {
		t.Fatal(err)
	}
	if bad := pool.Check(snap); len(bad) > 0 {
		t.Fatalf("pool after the runs: %+v", bad)
	}
	if snap.Bindings["db"] != db || !snap.Bindings["web"].IsValid() {
		t.Fatalf("bindings %v; want db at %s and web", snap.Bindings, db)
	}

	// The binding of a name no container has used for the pool's sticky
	// TTL is freed by gc --apply, and the name binds afresh.
	ctl := func(h dockerHost, id string, args ...string) string {
		t.Helper()
		out, err := ipamctlAs(t, id, etcd, h.d, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// expired runs gc on h2 and returns the addresses it lists as expired
	// (or, with --apply, their results).
	expired := func(args ...string) map[string]string {
		t.Helper()
		var out struct {
			Addresses []struct{ Address, Kind, Sticky, Result string }
		}
		if err := json.Unmarshal([]byte(ctl(h2, "h2", append([]string{"gc", "--json"}, args...)...)), &out); err != nil {
			t.Fatal(err)
		}
		res := map[string]string{}
		for _, a := range out.Addresses {
			if a.Result != "orphan" {
				res[a.Address+" "+a.Kind+" "+a.Sticky] = a.Result
			}
		}
		return res
	}
	const ttl = 2 * time.Second // pool set accepts any positive TTL
	ctl(h2, "h2", "pool", "set", stickySubnet, "--sticky-ttl", ttl.String())
	h2.d.MustDocker(t, "rm", "-f", "db")
	idleSince := time.Now()
	if got := expired(); len(got) > 0 && time.Since(idleSince) < ttl {
		t.Fatalf("gc right after db's rm, within the sticky TTL: %v; want nothing expired", got)
	}
	time.Sleep(time.Until(idleSince.Add(ttl + 100*time.Millisecond)))
	dbRow := db.String() + " reserved db"
	if got := expired(); !maps.Equal(got, map[string]string{dbRow: "expired"}) {
		t.Fatalf("gc %s after db's rm: %v; want only db's %s, expired", ttl, got, db)
	}
	if got := expired("--apply"); !maps.Equal(got, map[string]string{dbRow: "released"}) {
		t.Fatalf("gc --apply: %v; want db's %s released", got, db)
	}
	var bound []struct{ Address, Sticky string }
	if err := json.Unmarshal([]byte(ctl(h1, "h1", "sticky", "ls", "--subnet", stickySubnet, "--json")), &bound); err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(bound, func(b struct{ Address, Sticky string }) bool { return b.Sticky == "db" }); i >= 0 || len(bound) == 0 {
		t.Fatalf("sticky ls after gc --apply: %+v; want the other names, not db", bound)
	}
	snap, err = store.Snapshot(t.Context(), netip.MustParsePrefix(stickySubnet))
	if err != nil {
		t.Fatal(err)
	}
	if _, used := snap.Used[db]; used || !slices.Contains(snap.Free, db) || snap.Bindings["db"].IsValid() {
		t.Fatalf("after gc --apply: %s used %v, free %v, db bound to %v; want it free (no reuse delay: it was the name's) and db unbound",
			db, used, slices.Contains(snap.Free, db), snap.Bindings["db"])
	}
	freedAt := time.Now()
	fresh := mustRun(h1, "db")
	var rec pool.Allocation
	snap, err = store.Snapshot(t.Context(), netip.MustParsePrefix(stickySubnet))
	if err == nil {
		err = json.Unmarshal(snap.Used[fresh], &rec)
	}
	if err != nil || snap.Bindings["db"] != fresh || rec.Sticky != "db" || rec.Host != "h1" || rec.Since.Before(freedAt.Add(-time.Second)) {
		t.Fatalf("a new db after the expiry has %s: record %+v (%v), db bound to %s; want a binding made by this run", fresh, rec, err, snap.Bindings["db"])
	}
	if bad := pool.Check(snap); len(bad) > 0 {
		t.Fatalf("pool after the expiry: %+v", bad)
	}
}

// TestStickySwarmOnDocker29: a swarm service's replicas on a sticky
// --config-from network keep their addresses across docker service update
// --force and a move to another node. The network's driver (bridge) is
// node-local, so swarm's managers allocate no address for it: each node's
// dockerd asks its own plugin with no address and the task's container name
// (service.slot.taskid) as the endpoint name, which binds service.slot. An
// update with --update-order start-first cannot keep them: the new task
// asks for its slot's address while the old task holds it, is refused, and
// the update pauses with the old tasks running.
func TestStickySwarmOnDocker29(t *testing.T) {
	engine := dockertest.LookupEngine(t, "29")
	l := lab.UpWith(t, lab.Options{Hosts: 2, BinDir: binDir, Engines: []dockertest.Engine{engine, engine}})
	ctl := labCtl(t, l)
	swarmOf(t, l)
	const stickySubnet = "198.19.4.0/24" // apart from the lab's LAN and dockerd's pools
	for h := 1; h <= l.Hosts(); h++ {
		l.Docker(t, h, "network", "create", "--config-only", "--ipam-driver", "talkingdata", "--ipam-opt", "talkingdata.sticky=name",
			"--subnet", stickySubnet, "--ip-range", "198.19.4.128/25", "--gateway", fmt.Sprintf("198.19.4.%d", h),
			"-o", "com.docker.network.bridge.name=tdsticky0", "stk-config")
	}
	l.Docker(t, 1, "network", "create", "-d", "bridge", "--scope", "swarm", "--config-from", "stk-config", "stk")
	image := l.Docker(t, 1, "image", "inspect", "-f", "{{.Id}}", l.Image())
	l.Docker(t, 1, "service", "create", "--detach", "--no-resolve-image", "--name", "web", "--replicas", "2", "--network", "stk",
		"--stop-grace-period", "1s", "--update-monitor", "1s", image, "sleep", "600")

	type replica struct {
		host      int
		container string // web.<slot>.<task id>
		addr      netip.Addr
	}
	// replicas maps each slot (web.1, web.2) to its running task.
	replicas := func() map[string]replica {
		t.Helper()
		replicas := map[string]replica{}
		for h := 1; h <= l.Hosts(); h++ {
			for _, id := range serviceContainers(t, l, h, "running") {
				out := l.Docker(t, h, "inspect", "-f", `{{.Name}} {{(index .NetworkSettings.Networks "stk").IPAddress}}`, id)
				name, ip, _ := strings.Cut(strings.TrimPrefix(out, "/"), " ")
				if ip == "" {
					continue // stopping: dockerd has released its endpoint already
				}
				a, err := netip.ParseAddr(ip)
				dot := strings.LastIndex(name, ".") // web.<slot>.<task id>
				if err != nil || dot < 0 {
					t.Fatalf("task %q on h%d: %v", out, h, err)
				}
				replicas[name[:dot]] = replica{h, name, a}
			}
		}
		return replicas
	}
	settled := func(what string, ok func(map[string]replica) bool) map[string]replica {
		t.Helper()
		var r map[string]replica
		waitUntil(t, time.Minute, what, func() bool { r = replicas(); return len(r) == 2 && ok(r) })
		return r
	}
	sameAddrs := func(what string, before, r map[string]replica) {
		t.Helper()
		for slot, b := range before {
			if r[slot].addr != b.addr {
				t.Fatalf("after %s, slot %s has %s (%s), before %s (%s)", what, slot, r[slot].addr, r[slot].container, b.addr, b.container)
			}
		}
	}
	show := func(r map[string]replica) string {
		var b strings.Builder
		for _, slot := range slices.Sorted(maps.Keys(r)) {
			fmt.Fprintf(&b, "%s %s on h%d; ", r[slot].container, r[slot].addr, r[slot].host)
		}
		return strings.TrimSuffix(b.String(), "; ")
	}
	before := settled("2 running tasks", func(map[string]replica) bool { return true })
	if before["web.1"].addr == before["web.2"].addr {
		t.Fatalf("both replicas have %s", before["web.1"].addr)
	}
	// The binding is the slot's; the record names the endpoint dockerd
	// sent: the task's container.
	var bound []struct{ Address, Host, Endpoint, Sticky string }
	if err := json.Unmarshal([]byte(ctl(1, "sticky", "ls", "--subnet", stickySubnet, "--json")), &bound); err != nil {
		t.Fatal(err)
	}
	for _, b := range bound {
		r := before[b.Sticky]
		if b.Address != r.addr.String() || b.Endpoint != r.container || b.Host != fmt.Sprintf("h%d", r.host) {
			t.Fatalf("binding %+v; the slot's task is %+v", b, r)
		}
	}
	if len(bound) != 2 {
		t.Fatalf("bindings %+v; want web.1 and web.2", bound)
	}

	// update --force (stop-first): each slot's new task gets its address.
	l.Docker(t, 1, "service", "update", "--force", "--detach=false", "web")
	updated := settled("2 new running tasks", func(r map[string]replica) bool {
		return r["web.1"].container != before["web.1"].container && r["web.2"].container != before["web.2"].container
	})
	sameAddrs("update --force", before, updated)
	t.Logf("update --force: %s, before %s", show(updated), show(before))

	// Draining web.1's node moves its task to the other node, address and all.
	drained := updated["web.1"].host
	l.Docker(t, 1, "node", "update", "--availability", "drain", l.Docker(t, drained, "info", "-f", "{{.Swarm.NodeID}}"))
	moved := settled("both tasks off the drained node", func(r map[string]replica) bool {
		return r["web.1"].host != drained && r["web.2"].host != drained
	})
	sameAddrs("the drain", before, moved)
	t.Logf("drained h%d: %s", drained, show(moved))

	// start-first: the new task is refused its slot's address while the old
	// one holds it; the update pauses and the old tasks keep running.
	l.Docker(t, 1, "service", "update", "--force", "--detach", "--update-order", "start-first", "--update-failure-action", "pause", "web")
	waitUntil(t, time.Minute, "the start-first update paused", func() bool {
		return l.Docker(t, 1, "service", "inspect", "-f", "{{.UpdateStatus.State}}", "web") == "paused"
	})
	if errs := l.Docker(t, 1, "service", "ps", "--no-trunc", "--format", "{{.Error}}", "web"); !strings.Contains(errs, `is in use: container of host`) || !strings.Contains(errs, `bound to name "web.`) {
		t.Fatalf("start-first update: task errors %q; want the refusal naming the old task", errs)
	}
	if now := replicas(); !maps.Equal(now, moved) {
		t.Fatalf("after the paused start-first update: %v; want the old tasks still running, %v", now, moved)
	}
}
