package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// deadHostsPool fills 198.18.1.0/24 (seeded .10-.109) with the addresses
// of hosts in every liveness state; the ctl host ("ctl") is one of them.
func deadHostsPool(t *testing.T, c *ctl) {
	t.Helper()
	c.ok("init-range", "--subnet", "198.18.1.0/24", "--range", "198.18.1.10-198.18.1.109")
	c.ok("host-range", "--subnet", "198.18.1.0/24", "--range", "198.18.1.5")
	n, _ := pool.NewNetwork("198.18.1.0/24", "")
	a := netip.MustParseAddr
	containers := map[string][]string{
		"alive":       {"198.18.1.10"},
		"gone":        {"198.18.1.11", "198.18.1.12"},
		"recent":      {"198.18.1.13"},
		"unseen":      {"198.18.1.14"},
		"ctl":         {"198.18.1.15"},
		"stopped-old": {"198.18.1.16"},
	}
	for host, addrs := range containers {
		p, _ := c.pools(host)
		if err := p.Attach(ctx(t), n); err != nil {
			t.Fatal(err)
		}
		for i, addr := range addrs {
			mac := net.HardwareAddr{2, 0x42, 0, 0, byte(len(host)), byte(i)}.String()
			if _, err := p.Allocate(ctx(t), n, a(addr), pool.Allocation{Kind: pool.KindContainer, MAC: mac}); err != nil {
				t.Fatal(err)
			}
		}
	}
	gone, _ := c.pools("gone")
	if _, err := gone.Gateway(ctx(t), n, a("198.18.1.100"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := gone.Gateway(ctx(t), n, a("198.18.1.5"), true); err != nil { // claims the host address
		t.Fatal(err)
	}
	for _, h := range []string{"gone", "alive"} {
		p, _ := c.pools(h)
		if err := p.Aux(ctx(t), n, a("198.18.1.254")); err != nil {
			t.Fatal(err)
		}
	}

	// Liveness: "alive" runs a keeper; the others left lastseen records
	// behind at various times; "unseen" never ran one.
	_, store := c.pools("alive")
	k, err := store.StartKeeper(ctx(t), etcdstore.HostRecord{Host: "alive", Since: time.Now(), Instance: "alive-instance"}, etcdstore.KeeperConfig{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Stop(context.Background()) })
	now := time.Now().UTC()
	cli := c.etcd.Client(t)
	for host, seen := range map[string]etcdstore.LastSeen{
		"gone":        {Seen: now.Add(-20 * time.Minute)},
		"recent":      {Seen: now.Add(-2 * time.Minute)},
		"ctl":         {Seen: now.Add(-time.Hour)},
		"stopped-old": {Seen: now.Add(-30 * time.Minute), Stopped: true},
	} {
		seen.Host = host
		b, _ := json.Marshal(seen)
		if _, err := cli.Put(ctx(t), testPrefix+"/lastseen/"+host, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cen, err := store.Census(ctx(t))
		if err == nil && cen.Status("alive").State() == etcdstore.HostAlive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the keeper of host alive did not announce it within 10s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// results maps address → result.
func results(g gcJSON) map[string]string {
	m := map[string]string{}
	for _, a := range g.Addresses {
		m[a.Address] = a.Result
	}
	return m
}

func sameResults(t *testing.T, what string, got gcJSON, want map[string]string) {
	t.Helper()
	if g := results(got); !maps.Equal(g, want) {
		t.Fatalf("%s:\n got  %v\n want %v\n%+v", what, g, want, got.Addresses)
	}
}

func TestGCDeadHosts(t *testing.T) {
	c := newCtl(t)
	deadHostsPool(t, c)

	// Not listed: alive's .10, and ctl's own .15 although ctl looks dead.
	dry := map[string]string{
		"198.18.1.11":  gcOrphan, // gone
		"198.18.1.12":  gcOrphan, // gone
		"198.18.1.16":  gcOrphan, // stopped-old: a clean stop counts as gone too
		"198.18.1.13":  gcGrace,  // recent: dead for 2m < 10m
		"198.18.1.14":  gcUnseen, // no liveness record
		"198.18.1.100": gcAdvice, // gone's gateway
		"198.18.1.5":   gcAdvice, // gone's host address
		"198.18.1.254": gcAdvice, // the router, shared with alive
	}
	got := okJSON[gcJSON](c, "gc", "--dead-hosts")
	sameResults(t, "gc --dead-hosts", got, dry)
	if got.Host != "ctl" || !got.DeadHosts || got.Applied {
		t.Fatalf("gc --dead-hosts header: %+v", got)
	}
	table := c.ok("gc", "--dead-hosts")
	for _, want := range []string{
		"ipamctl release 198.18.1.0/24 198.18.1.100 --force",
		"ipamctl host release 198.18.1.0/24 198.18.1.5 --force",
		"aux held by dead host gone and by alive, which are not dead: left alone",
		`host "recent" dead, last seen`,
		`host "stopped-old" stopped, last seen`,
	} {
		if !strings.Contains(table, want) {
			t.Errorf("gc --dead-hosts table lacks %q:\n%s", want, table)
		}
	}
	shorter := okJSON[gcJSON](c, "gc", "--dead-hosts", "--grace", "1m")
	if results(shorter)["198.18.1.13"] != gcOrphan {
		t.Fatalf("with --grace 1m, recent's address: %v", results(shorter))
	}
	// A live lease key outweighs lastseen, even one marked stopped long ago
	// (as a second daemon of the host id stopping used to leave it).
	b, _ := json.Marshal(etcdstore.LastSeen{Host: "alive", Seen: time.Now().Add(-time.Hour), Stopped: true})
	if _, err := c.etcd.Client(t).Put(ctx(t), testPrefix+"/lastseen/alive", string(b)); err != nil {
		t.Fatal(err)
	}
	if r := results(okJSON[gcJSON](c, "gc", "--dead-hosts", "--grace", "0s")); r["198.18.1.10"] != "" {
		t.Fatalf("gc --dead-hosts --grace 0s lists the live host's address: %v", r)
	}
	// As seen from host "gone" itself, its own addresses are never listed.
	if self := results(okJSON[gcJSON](c, "gc", "--dead-hosts", "--host-id", "gone")); self["198.18.1.11"] != "" || self["198.18.1.15"] != gcOrphan {
		t.Fatalf("gc --dead-hosts --host-id gone: %v", self)
	}

	applied := okJSON[gcJSON](c, "gc", "--dead-hosts", "--apply")
	want := map[string]string{}
	for a, r := range dry {
		if r == gcOrphan {
			r = gcReleased
		}
		want[a] = r
	}
	sameResults(t, "gc --dead-hosts --apply", applied, want)
	var used []string
	for _, u := range okJSON[[]addrJSON](c, "addr", "ls", "198.18.1.0/24") {
		used = append(used, u.Address)
	}
	sort.Strings(used)
	if strings.Join(used, " ") != "198.18.1.10 198.18.1.100 198.18.1.13 198.18.1.14 198.18.1.15 198.18.1.254 198.18.1.5" {
		t.Fatalf("used after --apply: %v", used)
	}
	if chk := okJSON[[]checkJSON](c, "check"); len(chk) != 1 || len(chk[0].Anomalies) != 0 {
		t.Fatalf("check after gc --apply: %+v", chk)
	}
	again := okJSON[gcJSON](c, "gc", "--dead-hosts", "--apply")
	for _, a := range again.Addresses {
		if a.Result == gcReleased || a.Result == gcOrphan {
			t.Fatalf("second gc --apply still found %+v", a)
		}
	}

	states := map[string]string{}
	for _, h := range okJSON[[]hostAddrJSON](c, "host", "ls") {
		states[h.Host] = h.Live
		if h.Host == "alive" && h.Instance != "alive-instance" {
			t.Errorf("host ls: alive's instance %q, want the keeper's", h.Instance)
		}
	}
	wantStates := map[string]string{"alive": "alive", "gone": "dead", "recent": "dead", "unseen": "unknown", "ctl": "dead", "stopped-old": "stopped"}
	if !maps.Equal(states, wantStates) {
		t.Fatalf("host ls liveness: %v, want %v", states, wantStates)
	}
	if out := c.ok("host", "ls"); !strings.Contains(out, "LIVE") || !strings.Contains(out, "stopped") || !strings.Contains(out, "alive-instance") {
		t.Fatalf("host ls table:\n%s", out)
	}
}

// fakeDocker serves the Docker API calls gc makes, on a unix socket.
func fakeDocker(t *testing.T, endpoints map[string]string, running map[string]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /networks", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode([]map[string]string{{"Id": "n1", "Name": "lan"}, {"Id": "gone", "Name": "removed"}})
	})
	mux.HandleFunc("GET /networks/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "n1" {
			http.Error(w, `{"message":"network not found"}`, http.StatusNotFound)
			return
		}
		ctrs := map[string]map[string]string{}
		for name, cidr := range endpoints {
			ctrs["id-"+name] = map[string]string{"Name": name, "IPv4Address": cidr}
		}
		json.NewEncoder(w).Encode(map[string]any{"Containers": ctrs})
	})
	mux.HandleFunc("GET /containers/json", func(w http.ResponseWriter, _ *http.Request) {
		var out []any
		for id, ip := range running {
			out = append(out, map[string]any{"Id": id, "NetworkSettings": map[string]any{"Networks": map[string]any{"lan": map[string]string{"IPAddress": ip}}}})
		}
		json.NewEncoder(w).Encode(out)
	})
	// Docker's client negotiates the API version (/_ping) and puts it in
	// every path.
	mux.HandleFunc("/_ping", func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("Api-Version", "1.41") })
	versioned := regexp.MustCompile(`^/v[0-9.]+/`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = versioned.ReplaceAllString(r.URL.Path, "/")
		mux.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// TestGCLocal: host "gone"'s view, with its dockerd reporting .11 as an
// endpoint and .12 only as a running container's address: neither is an
// orphan. Everything else of gone's would be, once older than --min-age.
func TestGCLocal(t *testing.T) {
	c := newCtl(t)
	deadHostsPool(t, c)
	p, _ := c.pools("gone")
	n, _ := pool.NewNetwork("198.18.1.0/24", "")
	if _, err := p.Allocate(ctx(t), n, netip.MustParseAddr("198.18.1.20"), pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:01:20"}); err != nil {
		t.Fatal(err)
	}
	docker := fakeDocker(t, map[string]string{"web": "198.18.1.11/24"}, map[string]string{"abc": "198.18.1.12"})

	c.fails("--grace needs --dead-hosts", "gc", "--grace", "1m", "--docker-host", docker)
	c.fails("with --dead-hosts use --grace", "gc", "--dead-hosts", "--min-age", "1s")
	c.fails("calling the Docker API", "gc", "--host-id", "gone", "--docker-host", "unix:///nonexistent.sock")

	young := okJSON[gcJSON](c, "gc", "--host-id", "gone", "--docker-host", docker)
	sameResults(t, "gc (default --min-age)", young, map[string]string{"198.18.1.20": gcYoung})
	time.Sleep(1100 * time.Millisecond)
	dry := okJSON[gcJSON](c, "gc", "--host-id", "gone", "--docker-host", docker, "--min-age", "1s")
	sameResults(t, "gc --min-age 1s", dry, map[string]string{"198.18.1.20": gcOrphan})
	applied := okJSON[gcJSON](c, "gc", "--host-id", "gone", "--docker-host", docker, "--min-age", "1s", "--apply")
	sameResults(t, "gc --apply", applied, map[string]string{"198.18.1.20": gcReleased})
	if after := okJSON[gcJSON](c, "gc", "--host-id", "gone", "--docker-host", docker, "--min-age", "0s"); len(after.Addresses) != 0 {
		t.Fatalf("after --apply: %+v", after.Addresses)
	}
	// ctl's own (the global --host-id) .15 is not in Docker's list.
	if own := okJSON[gcJSON](c, "gc", "--docker-host", docker, "--min-age", "0s"); own.Host != "ctl" || !maps.Equal(results(own), map[string]string{"198.18.1.15": gcOrphan}) {
		t.Fatalf("gc as ctl: %+v", own)
	}
}

// TestGCReservedAndAnycast: gc returns a reserved address held by a dead
// host (or an orphan of this host) to its reservation, and only advises on
// anycast holds, per host.
func TestGCReservedAndAnycast(t *testing.T) {
	c := newCtl(t)
	deadHostsPool(t, c)
	n, _ := pool.NewNetwork("198.18.1.0/24", "")
	c.ok("reserve", "198.18.1.0/24", "198.18.1.61", "--name", "web")
	c.ok("reserve", "198.18.1.0/24", "198.18.1.62", "--name", "db")
	c.ok("anycast", "add", "198.18.1.0/24", "198.18.1.60")
	for host, vip := range map[string]string{"gone": "198.18.1.61", "alive": "198.18.1.62"} {
		p, _ := c.pools(host)
		for i, addr := range []string{vip, "198.18.1.60"} {
			if _, err := p.Allocate(ctx(t), n, netip.MustParseAddr(addr), pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:00:00:06:%d%d", len(host), i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	dead := okJSON[gcJSON](c, "gc", "--dead-hosts", "--apply")
	if r := results(dead); r["198.18.1.61"] != gcReleased || r["198.18.1.60"] != gcAdvice || r["198.18.1.62"] != "" {
		t.Fatalf("gc --dead-hosts --apply: %v", r)
	}
	if out := c.ok("gc", "--dead-hosts"); !strings.Contains(out, "ipamctl anycast rm 198.18.1.0/24 198.18.1.60 --host HOST") {
		t.Errorf("no per-host advice for the anycast hold:\n%s", out)
	}
	ls := okJSON[[]markJSON](c, "reserve", "ls")
	if len(ls) != 2 || ls[0].Address != "198.18.1.61" || ls[0].State != "idle" || ls[1].State != "held" {
		t.Fatalf("reservations after gc: %+v; want web idle, db still held by alive", ls)
	}

	// alive's own view: its dockerd reports neither address.
	docker := fakeDocker(t, map[string]string{}, map[string]string{})
	local := okJSON[gcJSON](c, "gc", "--host-id", "alive", "--docker-host", docker, "--min-age", "0s", "--apply")
	if r := results(local); r["198.18.1.62"] != gcReleased || r["198.18.1.60"] != gcAdvice {
		t.Fatalf("gc on alive: %v", r)
	}
	if ls := okJSON[[]markJSON](c, "reserve", "ls"); len(ls) != 2 || ls[1].State != "idle" {
		t.Fatalf("reservations after alive's gc: %+v", ls)
	}
	if acast := okJSON[[]markJSON](c, "anycast", "ls"); len(acast) != 1 || len(acast[0].Holders) != 2 {
		t.Fatalf("gc touched the anycast holds: %+v", acast)
	}
	c.ok("check")
}

// TestGCExpiredBindings: a sticky name's idle address is kept while the
// pool's sticky TTL runs, listed as expired after it (by any host's gc),
// and freed by --apply, its binding with it; a held one never expires.
// sticky ls lists both, sticky rm ends one by name.
func TestGCExpiredBindings(t *testing.T) {
	c := newCtl(t)
	c.ok("init-range", "--subnet", "198.18.2.0/24", "--range", "198.18.2.10-198.18.2.19")
	n, _ := pool.NewNetwork("198.18.2.0/24", "")
	p, store := c.pools("h1")
	if err := p.Attach(ctx(t), n); err != nil {
		t.Fatal(err)
	}
	bind := func(name string) netip.Addr {
		t.Helper()
		a, err := p.Allocate(ctx(t), n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:02:0" + name[len(name)-1:], Sticky: name})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	idle, held := bind("db1"), bind("db2")
	if _, err := p.Release(ctx(t), n.Subnet, idle); err != nil {
		t.Fatal(err)
	}
	listed := okJSON[[]markJSON](c, "sticky", "ls")
	if len(listed) != 2 || listed[0].Sticky == "" || listed[1].Sticky == "" {
		t.Fatalf("sticky ls: %+v", listed)
	}
	docker := fakeDocker(t, map[string]string{"db2": held.String() + "/24"}, nil)
	if kept := okJSON[gcJSON](c, "gc", "--docker-host", docker, "--min-age", "0s"); len(kept.Addresses) != 0 {
		t.Fatalf("within the sticky TTL: %+v", kept.Addresses)
	}
	c.ok("pool", "set", "198.18.2.0/24", "--sticky-ttl", "1ms")
	time.Sleep(10 * time.Millisecond)
	sameResults(t, "gc after the TTL", okJSON[gcJSON](c, "gc", "--docker-host", docker, "--min-age", "0s"), map[string]string{idle.String(): gcExpired})
	sameResults(t, "gc --apply", okJSON[gcJSON](c, "gc", "--docker-host", docker, "--min-age", "0s", "--apply"), map[string]string{idle.String(): gcReleased})
	if _, ok, err := store.Binding(ctx(t), n.Subnet, "db1"); err != nil || ok {
		t.Fatalf("db1's binding after gc: ok=%v, %v", ok, err)
	}
	if e, err := store.Entry(ctx(t), n.Subnet, idle); err != nil || e.Used != nil || !e.Free {
		t.Fatalf("db1's address after gc: %+v, %v; want free", e, err)
	}

	c.fails(`name "nope" is bound to no address`, "sticky", "rm", "198.18.2.0/24", "nope")
	if out := okJSON[[]markJSON](c, "sticky", "rm", "198.18.2.0/24", "db2"); len(out) != 1 || out[0].Sticky != "" || out[0].State != "held" {
		t.Fatalf("sticky rm of a held binding: %+v; want it held, unbound", out)
	}
	if _, ok, _ := store.Binding(ctx(t), n.Subnet, "db2"); ok {
		t.Fatal("db2's binding after sticky rm")
	}
}
