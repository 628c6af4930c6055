package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/lab"
)

// Issue 6 on the three-host lab: a reserved address that follows its
// container from host 1 to host 3 (a floating IP: no DNAT, no per-host
// NAT, just the same address on the flat L2), and an anycast address held
// by all three hosts at once on a second network.
func TestFloatingAndAnycastAddresses(t *testing.T) {
	l, ctl := flatL2(t)
	t.Run("floating", func(t *testing.T) { testFloating(t, l, ctl) })
	t.Run("anycast", func(t *testing.T) { testAnycast(t, l, ctl) })
	ctl(1, "check")
}

const vip = "198.18.2.10" // in the subnet, outside the automatic range

// runWeb starts the service with the floating address on host h. It
// announces the address with gratuitous ARP, as a service that moves
// must: the LAN's switches and neighbours learn where it is now.
func runWeb(l *lab.Lab, h int) (string, error) {
	return l.TryDocker(h, "run", "-d", "--init", "--name", "web", "--network", "lan", "--ip", vip, l.Image(),
		"sh", "-c", "arping -U -c 2 -I eth0 "+vip+"; exec sleep 600")
}

// pingUntil pings addr from a container until it answers (the ARP and
// forwarding tables of the LAN converge within moments), or fails.
func pingUntil(t *testing.T, l *lab.Lab, host int, container, addr string) {
	t.Helper()
	var err error
	var out string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out, err = l.TryDocker(host, "exec", container, "ping", "-c1", "-W1", addr); err == nil {
			return
		}
	}
	t.Fatalf("host %d %s cannot reach %s: %v %s", host, container, addr, err, out)
}

type markRow struct {
	Address     string
	State       string
	Host        string
	Reservation string
	Holders     map[string]int
}

func marks(t *testing.T, ctl func(int, ...string) string, args ...string) []markRow {
	t.Helper()
	var rows []markRow
	if err := json.Unmarshal([]byte(ctl(1, append(args, "--json")...)), &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

func testFloating(t *testing.T, l *lab.Lab, ctl func(int, ...string) string) {
	ctl(1, "reserve", lanSubnet, vip, "--name", "web")
	l.Docker(t, 2, "run", "-d", "--init", "--name", "client", "--network", "lan", l.Image(), "sleep", "600")

	if out, err := runWeb(l, 1); err != nil {
		t.Fatalf("web on host 1: %v %s", err, out)
	}
	pingUntil(t, l, 2, "client", vip)

	// While host 1 holds it, host 3 is refused, naming host 1 and since when.
	out, err := l.TryDocker(3, "run", "-d", "--name", "web-early", "--network", "lan", "--ip", vip, l.Image(), "true")
	if msg := fmt.Sprint(err) + out; err == nil || !strings.Contains(msg, `container of host "h1"`) || !strings.Contains(msg, "since 20") {
		t.Fatalf("host 3 taking %s while host 1 holds it: %v %s; want an error naming host h1 and since when", vip, err, out)
	}
	t.Logf("host 3 refused, as it should be: %v", err)
	l.Docker(t, 3, "rm", "-f", "web-early")

	// The move: stopped on host 1, started with the same --ip on host 3.
	l.Docker(t, 1, "stop", "web")
	if rows := marks(t, ctl, "reserve", "ls"); len(rows) != 1 || rows[0].State != "idle" {
		t.Fatalf("after the stop on host 1: %+v; want the idle reservation", rows)
	}
	l.Docker(t, 1, "rm", "web")
	if out, err := runWeb(l, 3); err != nil {
		t.Fatalf("web on host 3: %v %s", err, out)
	}
	if rows := marks(t, ctl, "reserve", "ls"); len(rows) != 1 || rows[0].State != "held" || rows[0].Host != "h3" || rows[0].Reservation != "web" {
		t.Fatalf("after the move: %+v; want held by h3", rows)
	}
	pingUntil(t, l, 2, "client", vip)
	l.Docker(t, 2, "rm", "-f", "client")
}

const (
	anySubnet = "198.19.0.0/24"
	anyRange  = "198.19.0.0/25"
	anyAddr   = "198.19.0.200"
	plainAddr = "198.19.0.100" // in the range: an ordinary address
)

func testAnycast(t *testing.T, l *lab.Lab, ctl func(int, ...string) string) {
	ctl(1, "init-range", "--subnet", anySubnet, "--range", anyRange)
	ctl(1, "anycast", "add", anySubnet, anyAddr)
	run := func(h int, name, addr string) (string, error) {
		return l.TryDocker(h, "run", "-d", "--init", "--name", name, "--network", "anycast", "--ip", addr, l.Image(), "sleep", "600")
	}
	// A second, host-local network: each host's routing daemon would
	// announce the anycast address from it; each host reaches its own.
	// Each host's gateway is named, so that no random pick takes plainAddr.
	for h := 1; h <= 3; h++ {
		l.Docker(t, h, "network", "create", "--ipam-driver", "talkingdata", "--subnet", anySubnet, "--ip-range", anyRange,
			"--gateway", fmt.Sprintf("198.19.0.%d", 10+h),
			"-o", "com.docker.network.bridge.name=any0", "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "anycast")
		if out, err := run(h, "svc", anyAddr); err != nil {
			t.Fatalf("anycast container on host %d: %v %s", h, err, out)
		}
		l.Exec(t, h, "ping", "-c1", "-W2", anyAddr)
	}
	holders := func() map[string]int {
		rows := marks(t, ctl, "anycast", "ls", "--subnet", anySubnet)
		if len(rows) != 1 {
			t.Fatalf("anycast ls: %+v", rows)
		}
		return rows[0].Holders
	}
	if h := holders(); len(h) != 3 {
		t.Fatalf("anycast holders %v, want h1, h2, h3", h)
	}

	// Everything else stays exclusive: a plain address on two hosts, and
	// the anycast address twice on one host.
	if out, err := run(1, "plain", plainAddr); err != nil {
		t.Fatalf("plain address on host 1: %v %s", err, out)
	}
	if out, err := run(2, "plain", plainAddr); err == nil || !strings.Contains(out+err.Error(), `container of host "h1"`) {
		t.Fatalf("plain address on host 2 too: %v %s; want refused naming h1", err, out)
	}
	if out, err := run(1, "svc2", anyAddr); err == nil || !strings.Contains(out+err.Error(), `already held on host "h1"`) {
		t.Fatalf("anycast address twice on host 1: %v %s; want refused", err, out)
	}

	// Releasing on one host leaves the others' holds and containers alone.
	l.Docker(t, 2, "rm", "-f", "svc")
	if h := holders(); len(h) != 2 || h["h1"] != 1 || h["h3"] != 1 {
		t.Fatalf("after host 2 let go: holders %v, want h1 and h3", h)
	}
	var used []struct {
		Address string
		Kind    string
		Holders map[string]int
	}
	if err := json.Unmarshal([]byte(ctl(1, "addr", "ls", anySubnet, "--kind", "anycast", "--json")), &used); err != nil {
		t.Fatal(err)
	}
	if len(used) != 1 || used[0].Address != anyAddr || len(used[0].Holders) != 2 {
		t.Fatalf("addr ls: %+v; want the anycast address with its 2 holders", used)
	}
	for _, h := range []int{1, 3} {
		l.Exec(t, h, "ping", "-c1", "-W2", anyAddr)
	}
	// What each host still has (refused containers stay created).
	for h, names := range map[int][]string{1: {"svc", "plain", "svc2"}, 2: {"plain"}, 3: {"svc"}} {
		l.Docker(t, h, append([]string{"rm", "-f"}, names...)...)
		l.Docker(t, h, "network", "rm", "anycast")
	}
	if h := holders(); len(h) != 0 {
		t.Fatalf("after every host let go: holders %v", h)
	}
}
