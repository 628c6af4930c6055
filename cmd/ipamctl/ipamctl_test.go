package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

const testPrefix = "/ipamctl-test"

// ctl runs ipamctl in-process against one etcd, as the given host.
type ctl struct {
	t     *testing.T
	etcd  *etcdtest.Server
	extra []string // endpoints given after etcd's, such as one that is down
}

func newCtl(t *testing.T) *ctl {
	t.Helper()
	return &ctl{t: t, etcd: etcdtest.Start(t)}
}

// run returns what the command wrote to stdout and stderr, and its error.
// Global flags are given explicitly, so IPAM_* in the environment does not
// leak into the test.
func (c *ctl) run(args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	argv := append([]string{"ipamctl", "--etcd-endpoints", strings.Join(append(c.etcd.Endpoints(), c.extra...), ","),
		"--etcd-prefix", testPrefix, "--host-id", "ctl", "--timeout", "10s"}, args...)
	err = app.Run(argv)
	return out.String(), errOut.String(), err
}

// ok runs a command that must succeed and returns its stdout.
func (c *ctl) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("ipamctl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs a command that must fail with an error containing want.
func (c *ctl) fails(want string, args ...string) string {
	c.t.Helper()
	out, _, err := c.run(args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		c.t.Fatalf("ipamctl %s: error %v, want one containing %q", strings.Join(args, " "), err, want)
	}
	return out
}

// okJSON runs a command with --json appended and decodes its stdout.
func okJSON[T any](c *ctl, args ...string) T {
	c.t.Helper()
	out := c.ok(append(args, "--json")...)
	var v T
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		c.t.Fatalf("ipamctl %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// pools is the allocation engine of one host, for putting used entries in
// the way the daemon does.
func (c *ctl) pools(host string) (*pool.Pools, *etcdstore.Store) {
	store := etcdstore.New(c.etcd.Client(c.t), testPrefix)
	return pool.New(store, pool.Config{Host: host}), store
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// populate creates 198.18.1.0/24 and puts in: two containers of hostA, one
// of hostB, hostA's gateway and an aux address (the router, outside the
// ranges) shared by both hosts.
func populate(t *testing.T, c *ctl) {
	c.ok("init-range", "--subnet", "198.18.1.0/24", "--range", "198.18.1.10-198.18.1.109")
	n, err := pool.NewNetwork("198.18.1.0/24", "")
	if err != nil {
		t.Fatal(err)
	}
	for host, addrs := range map[string][]string{"hostA": {"198.18.1.10", "198.18.1.11"}, "hostB": {"198.18.1.12"}} {
		p, _ := c.pools(host)
		if err := p.Attach(ctx(t), n); err != nil {
			t.Fatal(err)
		}
		for i, a := range addrs {
			if _, err := p.Allocate(ctx(t), n, netip.MustParseAddr(a), pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:c6:12:01:%02x", i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Aux(ctx(t), n, netip.MustParseAddr("198.18.1.254")); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := c.pools("hostA")
	if _, err := p.Gateway(ctx(t), n, netip.MustParseAddr("198.18.1.100"), false); err != nil {
		t.Fatal(err)
	}
}

func TestInitRange(t *testing.T) {
	c := newCtl(t)
	args := []string{"init-range", "--subnet", "198.18.0.0/24", "--range", "198.18.0.0/24",
		"--exclude", "198.18.0.10-198.18.0.19", "--exclude", "198.18.0.100"}
	got := okJSON[initRangeJSON](c, args...)
	want := []string{"198.18.0.1-198.18.0.9", "198.18.0.20-198.18.0.99", "198.18.0.101-198.18.0.254"}
	if got.Added != 254-11 || strings.Join(got.Ranges, ",") != strings.Join(want, ",") {
		t.Fatalf("first run: %+v, want added %d, ranges %v", got, 254-11, want)
	}
	if got := okJSON[initRangeJSON](c, args...); got.Added != 0 {
		t.Fatalf("re-run added %d, want 0", got.Added)
	}
	_, store := c.pools("x")
	free, err := store.Free(ctx(t), netip.MustParsePrefix("198.18.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range free {
		if a == netip.MustParseAddr("198.18.0.100") || (a.As4()[3] >= 10 && a.As4()[3] <= 19) || a.As4()[3] == 0 || a.As4()[3] == 255 {
			t.Errorf("%s is free, but it is excluded or not usable", a)
		}
	}
	if len(free) != 243 {
		t.Errorf("%d free addresses, want 243", len(free))
	}
	if out := c.ok(args...); !strings.HasPrefix(out, "SUBNET") || !strings.Contains(out, "ADDED") {
		t.Errorf("table output:\n%s", out)
	}
}

// The reuse delay is the pool's: init-range records it, pool set changes
// it, a re-run of init-range without --reuse-delay keeps it, and a release
// through any Pools applies it whatever that Pools' own setting.
func TestPoolReuseDelay(t *testing.T) {
	c := newCtl(t)
	const subnet = "198.18.0.0/29"
	delay := func() string { return okJSON[poolShowJSON](c, "pool", "show", subnet).ReuseDelay }
	c.ok("init-range", "--subnet", subnet, "--range", "198.18.0.1-198.18.0.2")
	if got := delay(); got != "1m0s" {
		t.Fatalf("a pool init-range created without --reuse-delay: %s, want 1m0s", got)
	}
	c.ok("init-range", "--subnet", subnet, "--range", "198.18.0.3", "--reuse-delay", "0s")
	if got := delay(); got != "0s" {
		t.Fatalf("after init-range --reuse-delay 0s: %s", got)
	}
	c.ok("init-range", "--subnet", subnet, "--range", "198.18.0.4")
	if got := delay(); got != "0s" {
		t.Fatalf("init-range without --reuse-delay changed it: %s", got)
	}
	if out := c.ok("pool", "set", subnet, "--reuse-delay", "1h"); !strings.Contains(out, "reuse delay 1h0m0s") {
		t.Fatalf("pool set said %q", out)
	}
	if got := delay(); got != "1h0m0s" {
		t.Fatalf("after pool set: %s", got)
	}
	c.fails("nothing to set", "pool", "set", subnet)
	c.fails("does not exist", "pool", "set", "198.18.9.0/24", "--reuse-delay", "1s")

	// A daemon run with no delay releases into the pool's hour.
	n, err := pool.NewNetwork(subnet, "")
	if err != nil {
		t.Fatal(err)
	}
	p, store := c.pools("h1") // ReuseDelay 0, as a daemon run with --reuse-delay 0
	a := netip.MustParseAddr("198.18.0.1")
	if _, err := p.Allocate(ctx(t), n, a, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:00:01"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Release(ctx(t), n.Subnet, a); err != nil {
		t.Fatal(err)
	}
	if d, ok, err := store.NextReuse(ctx(t), n.Subnet); err != nil || !ok || d < 59*time.Minute {
		t.Fatalf("after a release by a daemon with --reuse-delay 0: next reuse in %s (ok %v, %v), want the pool's hour", d, ok, err)
	}
}

// A /16 reports its progress on stderr, never on stdout.
func TestInitRangeLarge(t *testing.T) {
	c := newCtl(t)
	start := time.Now()
	out, errOut, err := c.run("init-range", "--subnet", "198.19.0.0/16", "--range", "198.19.0.0/16", "--json")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seeding a /16 took %s", time.Since(start))
	var got initRangeJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Added != 65534 {
		t.Fatalf("stdout %q (%v), want added 65534", out, err)
	}
	if n := strings.Count(errOut, "seeding 198.19.0.0/16: "); n < 5 || n > 11 || !strings.Contains(errOut, "65534/65534") {
		t.Errorf("progress on stderr:\n%s", errOut)
	}
}

func TestInitRangeRefusals(t *testing.T) {
	c := newCtl(t)
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"range outside subnet", `range "198.19.0.1-198.19.0.5": address 198.19.0.1 is outside subnet 198.18.0.0/24`,
			[]string{"--subnet", "198.18.0.0/24", "--range", "198.19.0.1-198.19.0.5"}},
		{"single address outside", `range "198.18.1.1"`, []string{"--subnet", "198.18.0.0/24", "--range", "198.18.1.1"}},
		{"network address", "network address", []string{"--subnet", "198.18.0.0/24", "--range", "198.18.0.0-198.18.0.9"}},
		{"CIDR larger than subnet", `range "198.18.0.0/23" is not inside subnet`, []string{"--subnet", "198.18.0.0/24", "--range", "198.18.0.0/23"}},
		{"invalid subnet", `invalid subnet "x"`, []string{"--subnet", "x", "--range", "198.18.0.1"}},
		{"host bits", "did you mean 198.18.0.0/24", []string{"--subnet", "198.18.0.1/24", "--range", "198.18.0.1"}},
		{"invalid range", `invalid range "198.18.0.9-198.18.0.1"`, []string{"--subnet", "198.18.0.0/24", "--range", "198.18.0.9-198.18.0.1"}},
		{"exclude outside", `exclude "10.0.0.1" is outside`, []string{"--subnet", "198.18.0.0/24", "--range", "198.18.0.1", "--exclude", "10.0.0.1"}},
		{"all excluded", "nothing to seed", []string{"--subnet", "198.18.0.0/24", "--range", "198.18.0.1", "--exclude", "198.18.0.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.fails(tc.want, append([]string{"init-range"}, tc.args...)...)
		})
	}
	if got := okJSON[[]poolJSON](c, "pool", "ls"); len(got) != 0 {
		t.Errorf("refused init-range created pools: %+v", got)
	}
}

func TestPoolLsShow(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	c.ok("init-range", "--subnet", "198.18.2.0/24", "--range", "198.18.2.1-198.18.2.4")

	ls := okJSON[[]poolJSON](c, "pool", "ls")
	if len(ls) != 2 {
		t.Fatalf("pool ls: %+v", ls)
	}
	// 100 seeded; .10-.12 and .100 taken from them; .254 used from outside.
	p := ls[0]
	if p.Subnet != "198.18.1.0/24" || p.State != "ready" || p.Size != 100 || p.Free != 96 || p.Used != 5 || p.Utilisation != 5.0 {
		t.Errorf("pool ls[0] = %+v, want size 100, free 96, used 5, 5.0%%", p)
	}
	if q := ls[1]; q.Subnet != "198.18.2.0/24" || q.Free != 4 || q.Used != 0 || q.Utilisation != 0 {
		t.Errorf("pool ls[1] = %+v", q)
	}

	show := okJSON[poolShowJSON](c, "pool", "show", "198.18.1.0/24")
	wantKind := map[string]int{"container": 3, "gateway": 1, "aux": 1, "host": 0, "reserved": 0, "anycast": 0}
	wantHost := map[string]int{"hostA": 4, "hostB": 2} // the shared aux counts for both
	wantNets := map[string]int{"hostA": 1, "hostB": 1}
	if !equal(show.UsedByKind, wantKind) || !equal(show.UsedByHost, wantHost) || !equal(show.Networks, wantNets) {
		t.Errorf("pool show: by kind %v, by host %v, networks %v; want %v, %v, %v",
			show.UsedByKind, show.UsedByHost, show.Networks, wantKind, wantHost, wantNets)
	}
	if show.CreatedBy != "ctl" || show.Created.IsZero() {
		t.Errorf("pool show: created %v by %q", show.Created, show.CreatedBy)
	}
	out := c.ok("pool", "show", "198.18.1.0/24")
	for _, want := range []string{"RANGES", "198.18.1.10-198.18.1.109", "UTILISATION  5.0%", "KIND", "HOST", "NETWORKS"} {
		if !strings.Contains(out, want) {
			t.Errorf("pool show table lacks %q:\n%s", want, out)
		}
	}

	// A pool caught mid-seeding says so.
	_, store := c.pools("x")
	m, _, err := store.Meta(ctx(t), netip.MustParsePrefix("198.18.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	seeding := m
	seeding.Seeding = true
	if _, ok, err := store.UpdateMeta(ctx(t), m, seeding); !ok || err != nil {
		t.Fatalf("marking seeding: %v %v", ok, err)
	}
	if out := c.ok("pool", "ls"); !strings.Contains(out, "seeding") || !strings.HasPrefix(out, "SUBNET") {
		t.Errorf("pool ls does not show the seeding pool:\n%s", out)
	}
	c.fails("pool 198.18.9.0/24 does not exist; create it with ipamctl init-range --subnet 198.18.9.0/24", "pool", "show", "198.18.9.0/24")
}

func equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestAddrLs(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	addrs := func(args ...string) string {
		var out []string
		for _, a := range okJSON[[]addrJSON](c, append([]string{"addr", "ls"}, args...)...) {
			out = append(out, a.Address)
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "198.18.1.10 198.18.1.11 198.18.1.12 198.18.1.100 198.18.1.254"},
		{[]string{"--host", "hostB"}, "198.18.1.12 198.18.1.254"},
		{[]string{"--kind", "container"}, "198.18.1.10 198.18.1.11 198.18.1.12"},
		{[]string{"--kind", "container", "--host", "hostA"}, "198.18.1.10 198.18.1.11"},
		{[]string{"--kind", "reserved"}, ""},
	} {
		if got := addrs(append(tc.args, "198.18.1.0/24")...); got != tc.want {
			t.Errorf("addr ls %v: %q, want %q", tc.args, got, tc.want)
		}
	}
	out := c.ok("addr", "ls", "--kind", "aux", "198.18.1.0/24")
	if !strings.HasPrefix(out, "ADDRESS") || !strings.Contains(out, "hostA,hostB") {
		t.Errorf("addr ls table:\n%s", out)
	}
	c.fails("want one of container, gateway, aux, host, reserved, anycast", "addr", "ls", "--kind", "bogus", "198.18.1.0/24")
	c.fails("does not exist", "addr", "ls", "198.18.9.0/24")
	// Flags after the subnet work too.
	if got := addrs("198.18.1.0/24", "--kind=aux", "--host", "hostB"); got != "198.18.1.254" {
		t.Errorf("addr ls with trailing flags: %q", got)
	}
	c.fails("flag provided but not defined: --bogus", "addr", "ls", "198.18.1.0/24", "--bogus")
	c.fails("flag needs an argument: --kind", "addr", "ls", "198.18.1.0/24", "--kind")
}

func TestRelease(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	out, _, err := c.run("release", "--json", "198.18.1.0/24", "198.18.1.10", "198.18.1.50", "bogus", "198.18.1.100")
	if err == nil || !strings.Contains(err.Error(), "2 of 4 addresses not released") {
		t.Fatalf("release: error %v, want 2 of 4 failed", err)
	}
	var got []releaseJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	results := []string{}
	for _, r := range got {
		results = append(results, r.Result)
	}
	if strings.Join(results, ",") != "released,not in use,failed,failed" {
		t.Fatalf("results %v:\n%s", results, out)
	}
	if r := got[0].Removed; r == nil || r.Kind != "container" || r.Host != "hostA" {
		t.Errorf("released record %+v, want hostA's container", r)
	}
	if !strings.Contains(got[3].Error, "--force") {
		t.Errorf("gateway release error %q does not mention --force", got[3].Error)
	}
	if a := okJSON[[]addrJSON](c, "addr", "ls", "--host", "hostA", "--kind", "container", "198.18.1.0/24"); len(a) != 1 {
		t.Errorf("after release hostA holds %+v, want only 198.18.1.11", a)
	}
	if p := okJSON[[]poolJSON](c, "pool", "ls"); p[0].Free != 97 {
		t.Errorf("198.18.1.10 did not go back to the free set: %+v", p[0])
	}
	if out := c.ok("release", "--force", "198.18.1.0/24", "198.18.1.100"); !strings.Contains(out, "released") {
		t.Errorf("forced release:\n%s", out)
	}
	c.fails("does not exist", "release", "198.18.9.0/24", "198.18.9.1")
}

func TestPoolRm(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	c.fails("still has 5 used addresses", "pool", "rm", "198.18.1.0/24")
	if out := c.ok("pool", "rm", "198.18.1.0/24", "--force"); strings.TrimSpace(out) != "198.18.1.0/24" {
		t.Errorf("pool rm printed %q", out)
	}
	if p := okJSON[[]poolJSON](c, "pool", "ls"); len(p) != 0 {
		t.Errorf("pool still listed: %+v", p)
	}
	c.fails("pool 198.18.1.0/24 does not exist", "pool", "rm", "198.18.1.0/24")
	c.ok("init-range", "--subnet", "198.18.2.0/24", "--range", "198.18.2.1")
	if got := okJSON[map[string]any](c, "pool", "rm", "198.18.2.0/24"); got["subnet"] != "198.18.2.0/24" || got["removed"] != true {
		t.Errorf("pool rm --json: %v", got)
	}
}

func TestUnreachableEtcd(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run([]string{"ipamctl", "--etcd-endpoints", "http://127.0.0.1:1", "--timeout", "300ms", "pool", "ls"})
	if err == nil || !strings.Contains(err.Error(), "did not answer within 300ms") {
		t.Fatalf("error %v, want a timeout naming the limit", err)
	}
}

func TestKindsKnown(t *testing.T) {
	for _, k := range kinds {
		if !k.Known() {
			t.Errorf("kind %q is listed but unknown to pool", k)
		}
	}
}
