package bridgesetup

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/talkingdata/ipam/internal/testproc"
)

// A lab is two throwaway network namespaces joined by a veth pair: "host",
// whose eth0 stands in for the NIC, and "peer", the rest of the segment:
//
//	host: eth0 02:00:c6:12:00:0b  198.18.0.11/24  2001:db8::11/64
//	      default via 198.18.0.12
//	      198.19.5.0/24 via 198.18.0.13 metric 50
//	      2001:db8:5::/64 via 2001:db8::12
//	peer: peer0  198.18.0.12/24 198.18.0.13/24  2001:db8::12/64
//	      lo     198.19.5.1  198.19.200.1  2001:db8:5::1
//
// so the host reaches the peer's lo addresses only through the static
// routes and the default route. Addresses are from 198.18.0.0/15 and
// 2001:db8::/32, and nothing leaves the two namespaces.
type lab struct {
	t          *testing.T
	host, peer string // netns names
	h          *Host  // under test, in host
	nl         *netlink.Handle
}

const hostMAC = "02:00:c6:12:00:0b"

var (
	labSeq      atomic.Int32
	errInjected = errors.New("injected failure")
)

// targets are the peer's addresses the host must reach: on the segment,
// through each static route, and through the default route.
var targets = []string{"198.18.0.12", "198.19.5.1", "198.19.200.1", "2001:db8::12", "2001:db8:5::1"}

func requireLab(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "ping", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	testproc.Require(t, len(missing) == 0, "bridgesetup's netns tests need "+strings.Join(missing, ", "))
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requireLab(t)
	base := fmt.Sprintf("bstest-%d-%d", os.Getpid(), labSeq.Add(1))
	l := &lab{t: t, host: base + "-h", peer: base + "-p"}
	for _, ns := range []string{l.host, l.peer} {
		l.ip("netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns delete %s: %v: %s", ns, err, out)
			}
		})
	}
	h, p := []string{"-n", l.host}, []string{"-n", l.peer}
	for _, args := range [][]string{
		append(h, "link", "set", "lo", "up"),
		append(p, "link", "set", "lo", "up"),
		append(h, "link", "add", "eth0", "address", hostMAC, "type", "veth", "peer", "name", "peer0", "netns", l.peer),
		append(h, "link", "set", "eth0", "up"),
		append(p, "link", "set", "peer0", "up"),
		append(h, "addr", "add", "198.18.0.11/24", "dev", "eth0"),
		append(h, "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad"),
		append(p, "addr", "add", "198.18.0.12/24", "dev", "peer0"),
		append(p, "addr", "add", "198.18.0.13/24", "dev", "peer0"),
		append(p, "addr", "add", "2001:db8::12/64", "dev", "peer0", "nodad"),
		append(p, "addr", "add", "198.19.5.1/32", "dev", "lo"),
		append(p, "addr", "add", "198.19.200.1/32", "dev", "lo"),
		append(p, "addr", "add", "2001:db8:5::1/128", "dev", "lo"),
		append(h, "route", "add", "default", "via", "198.18.0.12", "dev", "eth0"),
		append(h, "route", "add", "198.19.5.0/24", "via", "198.18.0.13", "dev", "eth0", "metric", "50"),
		append(h, "-6", "route", "add", "2001:db8:5::/64", "via", "2001:db8::12", "dev", "eth0"),
	} {
		l.ip(args...)
	}

	ns, err := netns.GetFromPath("/run/netns/" + l.host)
	if err != nil {
		t.Fatalf("opening netns %s: %v", l.host, err)
	}
	defer ns.Close()
	if l.h, err = NewAt(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.h.Close)
	if l.nl, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.nl.Close)
	return l
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// reachable pings every target from the host. Each may take a moment:
// after the bridge gets its carrier, the kernel's link watcher marks it
// ready asynchronously (and only then are its IPv6 addresses usable).
func (l *lab) reachable() {
	l.t.Helper()
	for _, addr := range targets {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out, err := exec.Command("nsenter", "--net=/run/netns/"+l.host, "ping", "-c1", "-W1", addr).CombinedOutput()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				l.t.Fatalf("ping %s from the host: %v\n%s\n%s", addr, err, out, l.dump())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// dump shows the host's configuration, for failure messages.
func (l *lab) dump() string {
	var b strings.Builder
	for _, args := range [][]string{{"-d", "addr"}, {"route", "show", "table", "all"}} {
		out, _ := exec.Command("ip", append([]string{"-n", l.host}, args...)...).CombinedOutput()
		b.Write(out)
	}
	return b.String()
}

// snapshot is the host's configuration as comparable lines: links, global
// addresses, and routes of every table. Left out is what the kernel
// derives from a link's readiness in its own time (IPv6 link-local
// addresses and routes, multicast routes, IPv6 local routes), which
// would make comparisons racy.
type snapshot struct {
	Links, Addrs, Routes []string
}

func (l *lab) snapshot() snapshot {
	l.t.Helper()
	links, err := dump("links", l.nl.LinkList)
	if err != nil {
		l.t.Fatal(err)
	}
	names := map[int]string{}
	for _, k := range links {
		names[k.Attrs().Index] = k.Attrs().Name
	}
	var s snapshot
	for _, k := range links {
		a := k.Attrs()
		if a.Name != "lo" {
			s.Links = append(s.Links, fmt.Sprintf("%s %s up=%t master=%s mac=%s",
				a.Name, k.Type(), a.Flags&net.FlagUp != 0, names[a.MasterIndex], a.HardwareAddr))
		}
	}
	addrs, err := dump("addrs", func() ([]netlink.Addr, error) { return l.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		l.t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && !a.IP.IsLinkLocalUnicast() && names[a.LinkIndex] != "lo" {
			s.Addrs = append(s.Addrs, names[a.LinkIndex]+" "+prefixOf(a.IPNet).String())
		}
	}
	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return l.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		l.t.Fatal(err)
	}
	for _, r := range routes {
		if r.Family == unix.AF_INET6 && (r.Table == unix.RT_TABLE_LOCAL || r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast())) {
			continue
		}
		if names[r.LinkIndex] == "lo" {
			continue
		}
		s.Routes = append(s.Routes, routeLine(r, names[r.LinkIndex]))
	}
	slices.Sort(s.Links)
	slices.Sort(s.Addrs)
	slices.Sort(s.Routes)
	return s
}

func routeLine(r netlink.Route, dev string) string {
	return fmt.Sprintf("%s dev %s table %d proto %d scope %d type %d prio %d",
		routeString(r), dev, r.Table, r.Protocol, r.Scope, r.Type, r.Priority)
}

func (l *lab) same(what string, want, got snapshot) {
	l.t.Helper()
	for _, c := range []struct {
		name      string
		want, got []string
	}{{"links", want.Links, got.Links}, {"addresses", want.Addrs, got.Addrs}, {"routes", want.Routes, got.Routes}} {
		if !slices.Equal(c.want, c.got) {
			l.t.Errorf("%s: %s differ:\nwant\n\t%s\ngot\n\t%s", what, c.name,
				strings.Join(c.want, "\n\t"), strings.Join(c.got, "\n\t"))
		}
	}
	if l.t.Failed() {
		l.t.FailNow()
	}
}

// failAfter makes the n-th step (from 0) of the next run fail after doing
// its work; n < 0 removes the hook.
func (l *lab) failAfter(n int) {
	if n < 0 {
		l.h.inject = nil
		return
	}
	i := 0
	l.h.inject = func(Step) error {
		i++
		if i == n+1 {
			return errInjected
		}
		return nil
	}
}

func details(steps []Step) []string {
	out := []string{}
	for _, s := range steps {
		out = append(out, s.Detail)
	}
	return out
}
