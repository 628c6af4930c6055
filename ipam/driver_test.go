package ipam_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
)

type plugin struct {
	t     *testing.T
	url   string
	pools *pool.Pools
}

// newPlugin serves a driver for host over HTTP, on etcd srv.
func newPlugin(t *testing.T, srv *etcdtest.Server, host string, local ...string) plugin {
	t.Helper()
	return newPluginWith(t, srv, host, func(*ipam.Driver) {}, local...)
}

// newPluginWith is newPlugin with the driver's settings changed by set.
func newPluginWith(t *testing.T, srv *etcdtest.Server, host string, set func(*ipam.Driver), local ...string) plugin {
	t.Helper()
	var addrs []netip.Addr
	for _, a := range local {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d := &ipam.Driver{
		Pools:      pool.New(etcdstore.New(srv.Client(t), "/t"), pool.Config{Host: host}),
		Timeout:    2 * time.Second,
		LocalAddrs: func() ([]netip.Addr, error) { return addrs, nil },
		StoreName:  "etcd " + strings.Join(srv.Endpoints(), ","),
		Log:        log,
	}
	set(d)
	hs := httptest.NewServer(ipam.Handler(d, log))
	t.Cleanup(hs.Close)
	return plugin{t, hs.URL, d.Pools}
}

// call posts body (a string is sent raw) and returns status and decoded reply.
func (p plugin) call(method string, body any) (int, map[string]any) {
	p.t.Helper()
	raw, ok := body.(string)
	if !ok {
		b, _ := json.Marshal(body)
		raw = string(b)
	}
	resp, err := http.Post(p.url+"/"+method, "application/json", strings.NewReader(raw))
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		p.t.Fatalf("%s: reply is not JSON: %v", method, err)
	}
	return resp.StatusCode, out
}

// ok calls and fails the test unless the call succeeded.
func (p plugin) ok(method string, body any) map[string]any {
	p.t.Helper()
	status, out := p.call(method, body)
	if status != 200 {
		p.t.Fatalf("%s %v: status %d %v", method, body, status, out)
	}
	return out
}

// refused calls and fails the test unless the call failed with an Err
// containing want.
func (p plugin) refused(method string, body any, want string) {
	p.t.Helper()
	status, out := p.call(method, body)
	if status == 200 || !strings.Contains(out["Err"].(string), want) {
		p.t.Fatalf("%s %v: status %d %v; want an Err containing %q", method, body, status, out, want)
	}
}

// mac is the options of endpoint n's request.
func mac(n int) map[string]string {
	return map[string]string{"com.docker.network.endpoint.macaddress": fmt.Sprintf("02:42:c6:12:00:%02x", n)}
}

func TestDockerSequenceOnTwoHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPlugin(t, srv, "host-a", "198.18.0.11")
	b := newPlugin(t, srv, "host-b", "198.18.0.12")

	if out := a.ok("Plugin.Activate", ""); out["Implements"].([]any)[0] != "IpamDriver" {
		t.Fatalf("activate: %v", out)
	}
	if out := a.ok("IpamDriver.GetCapabilities", ""); out["RequiresMACAddress"] != true {
		t.Fatalf("capabilities: %v", out)
	}
	if out := a.ok("IpamDriver.GetDefaultAddressSpaces", ""); out["LocalDefaultAddressSpace"] != "talkingdata" || out["GlobalDefaultAddressSpace"] != "talkingdata-global" {
		t.Fatalf("address spaces: %v", out)
	}
	// Swarm's managers allocate in the global space: refused, naming the way that works.
	a.refused("IpamDriver.RequestPool", map[string]any{"AddressSpace": "talkingdata-global", "Pool": "198.18.0.0/24"}, "--config-from")
	a.refused("IpamDriver.RequestPool", map[string]any{"AddressSpace": "other", "Pool": "198.18.0.0/24"}, `unknown address space "other"`)
	req := map[string]any{"AddressSpace": "talkingdata", "Pool": "198.18.0.0/24", "SubPool": "198.18.0.128/25"}
	idA := a.ok("IpamDriver.RequestPool", req)["PoolID"]
	idB := b.ok("IpamDriver.RequestPool", req)["PoolID"]
	if idA != "198.18.0.0/24@198.18.0.128/25" || idA != idB {
		t.Fatalf("pool ids %v and %v: want one deterministic id", idA, idB)
	}
	gw := map[string]string{"RequestAddressType": "com.docker.network.gateway"}
	// No --gateway: each host's own address in the subnet.
	if got := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": idA, "Options": gw})["Address"]; got != "198.18.0.11/24" {
		t.Fatalf("default gateway of host a: %v", got)
	}
	if got := b.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": idB, "Address": "198.18.0.12", "Options": gw})["Address"]; got != "198.18.0.12/24" {
		t.Fatalf("gateway of host b: %v", got)
	}
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": idB, "Address": "198.18.0.11", "Options": gw}, `is the gateway of host "host-a"`)
	for _, p := range []plugin{a, b} {
		if got := p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": idA, "Address": "198.18.0.1", "Options": nil})["Address"]; got != "198.18.0.1/24" {
			t.Fatalf("aux router: %v", got)
		}
	}
	fixed := map[string]any{"PoolID": idA, "Address": "198.18.0.200", "Options": mac(100)}
	a.ok("IpamDriver.RequestAddress", fixed)
	// Docker >= 29 names the endpoint; without the MAC capability it sends
	// no MAC. Still a container's address, never a shared aux one.
	named := map[string]any{"PoolID": idA, "Address": "198.18.0.201", "Options": map[string]string{"com.docker.network.endpoint.name": "web"}}
	a.ok("IpamDriver.RequestAddress", named)
	b.refused("IpamDriver.RequestAddress", named, `198.18.0.201 is in use: container of host "host-a", endpoint "web"`)
	seen := map[any]bool{"198.18.0.200/24": true, "198.18.0.201/24": true}
	for i := range 10 {
		p := []plugin{a, b}[i%2]
		got := p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": idA, "Options": mac(i)})["Address"].(string)
		pfx := netip.MustParsePrefix(got)
		if seen[got] || pfx.Bits() != 24 || !netip.MustParsePrefix("198.18.0.128/25").Contains(pfx.Addr()) {
			t.Fatalf("container address %s: duplicate, or not a /24 in the ip-range", got)
		}
		seen[got] = true
	}
	b.refused("IpamDriver.RequestAddress", fixed, `198.18.0.200 is in use: container of host "host-a", mac 02:42:c6:12:00:64`)
	b.refused("IpamDriver.ReleaseAddress", map[string]any{"PoolID": idA, "Address": "198.18.0.200"}, `host "host-b" may not release it`)
	a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": idA, "Address": "198.18.0.200"})
	a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": idA, "Address": "198.18.0.200"}) // repeated: harmless
	b.ok("IpamDriver.RequestAddress", fixed)
	// dockerd re-sends a request whose answer it lost: same host, same MAC.
	b.ok("IpamDriver.RequestAddress", fixed)
	for _, p := range []plugin{a, b} {
		p.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": idA, "Address": "198.18.0.1"})
		p.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": idA})
	}
}

// TestRouterGatewayOnTwoHosts: macvlan and ipvlan networks of every host
// name the LAN router as --gateway, which dockerd requests like a bridge's
// gateway; with --ipam-opt talkingdata.gateway=router each host holds a
// shared reference to it, while bridge networks' gateways stay one host's.
func TestRouterGatewayOnTwoHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPlugin(t, srv, "host-a", "198.18.8.11")
	b := newPlugin(t, srv, "host-b", "198.18.8.12")
	gw := map[string]string{"RequestAddressType": "com.docker.network.gateway"}
	routerReq := map[string]any{"Pool": "198.18.8.0/24", "SubPool": "198.18.8.128/26", "Options": map[string]string{"talkingdata.gateway": "router"}}
	var ids []any
	for _, p := range []plugin{a, b} {
		id := p.ok("IpamDriver.RequestPool", routerReq)["PoolID"]
		if id != "198.18.8.0/24@198.18.8.128/26;gateway=router" {
			t.Fatalf("router pool id %v", id)
		}
		ids = append(ids, id)
		if got := p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.8.1", "Options": gw})["Address"]; got != "198.18.8.1/24" {
			t.Fatalf("router as gateway: %v", got)
		}
	}
	// A bridge network on the same subnet: its gateway is still one host's
	// own, and the router is not it; naming another host's gateway is
	// refused with the hint for macvlan users.
	bridgeID := a.ok("IpamDriver.RequestPool", map[string]any{"Pool": "198.18.8.0/24"})["PoolID"]
	bridgeIDb := b.ok("IpamDriver.RequestPool", map[string]any{"Pool": "198.18.8.0/24"})["PoolID"]
	a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": bridgeID, "Address": "198.18.8.11", "Options": gw})
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": bridgeIDb, "Address": "198.18.8.1", "Options": gw}, "198.18.8.1 is in use: aux")
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": bridgeIDb, "Address": "198.18.8.11", "Options": gw},
		`each host's gateway must be its own bridge address (if 198.18.8.11 is the LAN router of a macvlan or ipvlan network, create the network with --ipam-opt talkingdata.gateway=router)`)
	// Nor may a router pool take a host's bridge gateway as its router.
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": ids[1], "Address": "198.18.8.11", "Options": gw}, `198.18.8.11 is in use: gateway of host "host-a"`)

	store := etcdstore.New(srv.Client(t), "/t")
	subnet := netip.MustParsePrefix("198.18.8.0/24")
	router := func() *pool.Allocation {
		t.Helper()
		used, err := store.Used(context.Background(), subnet)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range used {
			if u.Addr == netip.MustParseAddr("198.18.8.1") {
				return u.Allocation
			}
		}
		return nil
	}
	if r := router(); r == nil || r.Kind != pool.KindAux || r.Holders["host-a"] != 1 || r.Holders["host-b"] != 1 {
		t.Fatalf("router entry %+v, want aux held once by each host", r)
	}
	// Container addresses come from the range as on any network.
	if got := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": ids[0], "Options": mac(1)})["Address"].(string); !netip.MustParsePrefix("198.18.8.128/26").Contains(netip.MustParsePrefix(got).Addr()) {
		t.Fatalf("container address %s outside the ip-range", got)
	}
	// network rm on each host: the router goes with the last reference.
	a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": ids[0], "Address": "198.18.8.1"})
	if r := router(); r == nil || r.Holders["host-a"] != 0 || r.Holders["host-b"] != 1 {
		t.Fatalf("router entry after host a let go: %+v", r)
	}
	b.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": ids[1], "Address": "198.18.8.1"})
	if r := router(); r != nil {
		t.Fatalf("router entry after both let go: %+v, want none", r)
	}
	for _, p := range []plugin{a, b} {
		p.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": ids[0]})
	}
}

// TestBadInputIsRefusedAndWritesNothing: each malformed call gets a clear
// error naming the bad field or value, and etcd's revision does not move.
func TestBadInputIsRefusedAndWritesNothing(t *testing.T) {
	srv := etcdtest.Start(t)
	p := newPlugin(t, srv, "h")
	id := p.ok("IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24"})["PoolID"]
	p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.9", "Options": mac(0)})
	cli := srv.Client(t)
	revision := func() int64 {
		r, err := cli.Get(context.Background(), "/t", nil...)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	before := revision()
	for _, tc := range []struct {
		method string
		body   any
		want   string
	}{
		{"IpamDriver.RequestPool", `{"Pool":`, "invalid IpamDriver.RequestPool request"},
		{"IpamDriver.RequestPool", `{"Pool": 7}`, "invalid IpamDriver.RequestPool request"},
		{"IpamDriver.RequestPool", `{"Pool":"198.18.0.0/24"} {}`, "trailing data"},
		{"IpamDriver.RequestPool", `{"Pool":"` + strings.Repeat("1", ipam.MaxBodyBytes) + `"}`, "larger than"},
		{"IpamDriver.RequestPool", map[string]any{}, "a subnet is required"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.1/24"}, "did you mean 198.18.0.0/24"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "nonsense"}, `invalid subnet "nonsense"`},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24", "SubPool": "198.18.1.0/25"}, `invalid ip-range "198.18.1.0/25"`},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24", "V6": true}, "not of the requested address family (IPv6)"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24", "Options": map[string]string{"talkingdata.x": "1"}}, `unsupported --ipam-opt "talkingdata.x"`},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/24", "Options": map[string]string{"talkingdata.gateway": "host"}}, `invalid --ipam-opt talkingdata.gateway="host"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "198.18.0.0/24;gateway=host"}, "unknown PoolID"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "198.18.0.0/24;gateway=router", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}},
			"has the LAN router as gateway (--ipam-opt talkingdata.gateway=router): give the router as --gateway"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "bogus"}, `unknown PoolID "bogus"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "198.18.0.0/24@198.18.0.0/24"}, "unknown PoolID"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "300.1.1.1"}, `invalid Address "300.1.1.1"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "2001:db8::1"}, "outside subnet 198.18.0.0/24"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.1.5"}, "outside subnet"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.0", "Options": mac(0)}, "network address"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.255", "Options": mac(0)}, "broadcast address"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": map[string]string{"com.docker.network.endpoint.macaddress": "zz"}}, `invalid option com.docker.network.endpoint.macaddress="zz"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.9", "Options": mac(1)}, "in use"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "198.18.5.0/24", "Options": mac(1)}, "no such pool"},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": ""}, `invalid Address ""`},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": "198.18.5.0/24", "Address": "198.18.5.1"}, "no such pool: 198.18.5.0/24"},
		{"IpamDriver.ReleasePool", map[string]any{"PoolID": "198.18.5.0/24"}, "no such pool"},
		{"IpamDriver.ReleasePool", map[string]any{"PoolID": ""}, "unknown PoolID"},
	} {
		p.refused(tc.method, tc.body, tc.want)
	}
	if after := revision(); after != before {
		t.Fatalf("etcd revision moved from %d to %d: a refused call wrote something", before, after)
	}
	resp, err := http.Get(p.url + "/IpamDriver.RequestPool")
	if err != nil || resp.StatusCode == 200 {
		t.Fatalf("GET accepted: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestEtcdDownAnswersWithinTimeout: dockerd must never hang on us.
func TestEtcdDownAnswersWithinTimeout(t *testing.T) {
	srv := etcdtest.Start(t)
	p := newPlugin(t, srv, "h")
	id := p.ok("IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/28"})["PoolID"]
	srv.Stop(t)
	for _, tc := range []struct {
		method string
		body   any
	}{
		{"IpamDriver.RequestPool", map[string]any{"Pool": "198.18.1.0/28"}},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(0)}},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": "198.18.0.2"}},
		{"IpamDriver.ReleasePool", map[string]any{"PoolID": id}},
	} {
		start := time.Now()
		p.refused(tc.method, tc.body, "within 2s (--request-timeout)")
		if took := time.Since(start); took > 4*time.Second {
			t.Fatalf("%s took %s with etcd down; the timeout is 2s", tc.method, took)
		}
	}
	srv.Restart(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, out := p.call("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(0)})
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing 20s after etcd came back: %v", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestWithoutEndpointMAC: a daemon that asks dockerd for no MAC (so that
// ipvlan networks work) tells endpoints apart by the name Docker >= 29
// sends, and refuses an endpoint request from an engine that sends none.
func TestWithoutEndpointMAC(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPluginWith(t, srv, "host-a", func(d *ipam.Driver) { d.NoEndpointMAC = true })
	if out := a.ok("IpamDriver.GetCapabilities", ""); out["RequiresMACAddress"] != false {
		t.Fatalf("capabilities: %v; want no MAC required", out)
	}
	id := a.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "talkingdata", "Pool": "198.18.0.0/24", "SubPool": "198.18.0.128/25"})["PoolID"]
	named := func(name string) map[string]any {
		return map[string]any{"PoolID": id, "Options": map[string]string{"com.docker.network.endpoint.name": name}}
	}
	db := a.ok("IpamDriver.RequestAddress", named("db"))["Address"]
	if again := a.ok("IpamDriver.RequestAddress", named("db"))["Address"]; again != db {
		t.Fatalf("db's retried request got %v; want its own %v", again, db)
	}
	if web := a.ok("IpamDriver.RequestAddress", named("web"))["Address"]; web == db {
		t.Fatalf("web got db's %v", web)
	}
	// dockerd before 29 sends no options at all for an endpoint.
	a.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": nil}, "--endpoint-mac=false")
	// An --aux-address (no options, an address) is as before.
	if got := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.18.0.1", "Options": nil})["Address"]; got != "198.18.0.1/24" {
		t.Fatalf("aux router: %v", got)
	}
}
