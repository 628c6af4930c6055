package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
)

// TestConformance drives the same Docker workflows twice on one dockerd,
// once on networks with Docker's built-in IPAM (the oracle) and once on
// networks with --ipam-driver talkingdata, and compares the outcomes:
// success or refusal, and what can be seen (an address as an offset in its
// subnet, the same address as before, a container running). Error texts
// are not compared. Every difference must be a row of
// docs/COMPATIBILITY.md for this engine, and every row naming this engine
// must still differ, so the document stays true.
//
// Both IPAMs share one dockerd: Docker's networks live in 198.18.64-127.x,
// talkingdata's in 198.18.128-191.x (2001:db8:d0:… and 2001:db8:7d:… for
// IPv6), with the same host offsets. Workflows run in parallel; the
// dockerd restarts at the end are shared by both.
func TestConformance(t *testing.T) {
	for _, e := range dockertest.MatrixEngines(t) {
		t.Run(e.Name, func(t *testing.T) { testConformance(t, e) })
	}
}

// side is one IPAM under comparison.
type side struct {
	name  string   // "docker" or "talkingdata"
	ipam  []string // extra `network create` arguments
	oct   int      // third octet of the first IPv4 subnet
	v6    string   // IPv6 subnets are v6:K::/64
	short string   // prefix of the names of its networks and containers
}

var (
	dockerSide = side{name: "docker", oct: 64, v6: "2001:db8:d0:", short: "d"}
	tdSide     = side{name: "talkingdata", ipam: []string{"--ipam-driver", "talkingdata"}, oct: 128, v6: "2001:db8:7d:", short: "t"}
)

// dockerPools are Docker's default address pools, for networks without
// --subnet: inside the test range, not 172.17/16.
var dockerPools = netip.MustParsePrefix("198.18.192.0/18")

// daemonConfig is dockerd's config file for every start of the run.
func daemonConfig(liveRestore bool) map[string]any {
	return map[string]any{
		"default-address-pools": []map[string]any{{"base": dockerPools.String(), "size": 24}},
		"live-restore":          liveRestore,
	}
}

// conformanceHost is the host id of the plugin under test.
const conformanceHost = "conformance"

// conformance is one engine's run.
type conformance struct {
	t       *testing.T
	d       *dockertest.Daemon
	image   string
	engine  string // its name, as rows of docs/COMPATIBILITY.md use it
	compose string // the compose that goes with the engine
	store   *etcdstore.Store
	etcd    *etcdtest.Server // for ipamctl

	mu       sync.Mutex
	outcomes map[string]map[string]outcome // side → step id → outcome
	tdNets   map[string]netip.Prefix       // talkingdata network → subnet, for the etcd check
}

type outcome struct {
	result string // compared between the sides
	detail string // the error text of a refusal: shown, not compared
}

func testConformance(t *testing.T, e dockertest.Engine) {
	start := time.Now()
	allowed := readCompatibility(t)
	compose := e.Compose
	if compose == "" { // 20.10: Debian's docker-compose 1.29
		compose, _ = exec.LookPath("docker-compose")
	}
	testproc.Require(t, compose != "", "engine "+e.Name+" has no compose of its own, and there is no docker-compose (Debian package docker-compose)")
	etcd := etcdtest.Start(t)
	pluginDir := t.TempDir()
	startPlugin(t, pluginDir, "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--host-id", conformanceHost)
	d := dockertest.Start(t, dockertest.Options{PluginDir: pluginDir, Engine: e})
	d.SetDaemonConfig(t, daemonConfig(false))
	d.Restart(t)
	c := &conformance{
		t: t, d: d, image: d.ImportBusybox(t), engine: e.Name, compose: compose,
		store:    etcdstore.New(etcd.Client(t), etcdstore.DefaultPrefix),
		etcd:     etcd,
		outcomes: map[string]map[string]outcome{},
		tdNets:   map[string]netip.Prefix{},
	}
	t.Logf("engine %s: %s, compose %s", c.engine, d.MustDocker(t, "version", "-f", "dockerd {{.Server.Version}}, API {{.Server.APIVersion}}"), compose)

	c.runWorkflows()
	t.Logf("workflows done after %s", time.Since(start).Round(time.Second))
	c.daemonRestarts()
	c.checkEtcd("at the end")
	c.compare(allowed)
	t.Logf("engine %s: conformance took %s", c.engine, time.Since(start).Round(time.Second))
}

// record notes one step's outcome on one side.
func (c *conformance) record(s side, id, result, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.outcomes[s.name]
	if m == nil {
		m = map[string]outcome{}
		c.outcomes[s.name] = m
	}
	if _, dup := m[id]; dup {
		c.t.Errorf("step %s recorded twice on %s", id, s.name)
	}
	m[id] = outcome{result, detail}
}

// compare fails on every difference the document does not list for this
// engine, and on every listed one that did not happen.
func (c *conformance) compare(allowed map[string]compatRow) {
	t := c.t
	dk, td := c.outcomes[dockerSide.name], c.outcomes[tdSide.name]
	ids := map[string]bool{}
	for id := range dk {
		ids[id] = true
	}
	for id := range td {
		ids[id] = true
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	seen := map[string]bool{}
	for _, id := range sorted {
		a, b := dk[id], td[id]
		row, listed := allowed[id]
		listed = listed && row.covers(c.engine)
		seen[id] = true
		switch {
		case a.result == b.result && listed:
			t.Errorf("%s: docs/COMPATIBILITY.md lists a difference on %s, but both IPAMs answered %q", id, c.engine, a.result)
		case a.result == b.result:
			t.Logf("same    %-28s %s", id, a.result)
		case listed:
			t.Logf("allowed %-28s docker: %s | talkingdata: %s%s", id, a.result, b.result, details(a, b))
		default:
			t.Errorf("%s: docker: %q, talkingdata: %q%s: a difference not listed for %s in docs/COMPATIBILITY.md", id, a.result, b.result, details(a, b), c.engine)
		}
	}
	for id, row := range allowed {
		if !seen[id] && row.covers(c.engine) {
			t.Errorf("docs/COMPATIBILITY.md lists %s on %s, but no workflow ran it", id, c.engine)
		}
	}
}

func details(a, b outcome) string {
	var s string
	if a.detail != "" {
		s += " (docker: " + a.detail + ")"
	}
	if b.detail != "" {
		s += " (talkingdata: " + b.detail + ")"
	}
	return s
}

// checkEtcd compares talkingdata's used container addresses, in every
// subnet of a talkingdata network, with the addresses of the running
// containers: the same set, nothing leaked, nothing missing. Releases
// dockerd sends while it starts may lag a little: it looks again for up
// to 15 s before failing.
func (c *conformance) checkEtcd(when string) {
	var problems []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if problems = c.etcdProblems(); len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range problems {
		c.t.Errorf("%s: %s", when, p)
	}
}

func (c *conformance) etcdProblems() []string {
	var problems []string
	running := map[netip.Addr]string{}
	ids, err := c.d.Docker("ps", "-q")
	if err != nil {
		return []string{err.Error()}
	}
	if ids := strings.Fields(ids); len(ids) > 0 {
		out, err := c.d.Docker(append([]string{"inspect", "-f",
			`{{.Name}}{{range .NetworkSettings.Networks}} {{.IPAddress}} {{.GlobalIPv6Address}}{{end}}`}, ids...)...)
		if err != nil {
			return []string{err.Error()}
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			for _, s := range f[1:] {
				if a, err := netip.ParseAddr(s); err == nil {
					running[a] = f[0]
				}
			}
		}
	}
	c.mu.Lock()
	nets := map[netip.Prefix]string{}
	for name, p := range c.tdNets {
		nets[p] = name
	}
	c.mu.Unlock()
	for p, name := range nets {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		used, err := c.store.Used(ctx, p)
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("etcd %s: %v", p, err))
			continue
		}
		held := map[netip.Addr]bool{}
		for _, u := range used {
			if u.Allocation.Kind != pool.KindContainer {
				continue
			}
			held[u.Addr] = true
			if running[u.Addr] == "" {
				problems = append(problems, fmt.Sprintf("etcd holds %s (network %s) for %s, but no running container has it", u.Addr, name, u.Allocation.Describe()))
			}
		}
		for a, ctr := range running {
			if p.Contains(a) && !held[a] {
				problems = append(problems, fmt.Sprintf("container %s runs with %s (network %s), which etcd does not hold", ctr, a, name))
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// compatRow is the engines column of a row of docs/COMPATIBILITY.md's
// table: "all", or engine names.
type compatRow []string

func (r compatRow) covers(engine string) bool {
	return slices.Contains(r, "all") || slices.Contains(r, engine)
}

// readCompatibility parses the table rows of docs/COMPATIBILITY.md:
// | `id` | workflow | Docker's IPAM | talkingdata | why | engines |
func readCompatibility(t *testing.T) map[string]compatRow {
	t.Helper()
	b, err := os.ReadFile("../docs/COMPATIBILITY.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]compatRow{}
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 6 {
			t.Fatalf("docs/COMPATIBILITY.md:%d: %d cells, want 6 (id, workflow, Docker's IPAM, talkingdata, why, engines)", i+1, len(cells))
		}
		engines := compatRow(dockertest.ParseEngineNames(cells[5]))
		for _, e := range engines {
			if e != "all" {
				checkEngineName(t, fmt.Sprintf("docs/COMPATIBILITY.md:%d", i+1), e)
			}
		}
		// The id cell holds one or more backticked step ids.
		ids := strings.Split(cells[0], "`")
		for j := 1; j < len(ids); j += 2 {
			id := ids[j]
			if _, dup := rows[id]; dup || len(engines) == 0 {
				t.Fatalf("docs/COMPATIBILITY.md:%d: %s listed twice, or with no engines", i+1, id)
			}
			rows[id] = engines
		}
	}
	if len(rows) == 0 {
		t.Fatal("docs/COMPATIBILITY.md has no table rows")
	}
	return rows
}

// checkEngineName fails the test on a name that is no engine: a row or
// workflow naming "28" or "29.0" would never apply where it was meant to.
func checkEngineName(t *testing.T, where, name string) {
	t.Helper()
	if !slices.Contains(dockertest.KnownEngines(), name) {
		t.Fatalf("%s: unknown engine %q (known: %s)", where, name, strings.Join(dockertest.KnownEngines(), ", "))
	}
}
