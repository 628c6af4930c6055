package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go4.org/netipx"
)

func mustNetwork(t testing.TB, subnet, ipRange string) Network {
	t.Helper()
	n, err := NewNetwork(subnet, ipRange)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// hosts returns one Pools per host id, all on one store, each attached to n.
func hosts(t testing.TB, s Store, n Network, ids ...string) []*Pools {
	t.Helper()
	var out []*Pools
	for _, id := range ids {
		p := New(s, Config{Host: id})
		if err := p.Attach(context.Background(), n); err != nil {
			t.Fatalf("Attach(%s) by %s: %v", n, id, err)
		}
		out = append(out, p)
	}
	return out
}

func TestAllocateUntilExhaustedAndRelease(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.64/28")
	ps := hosts(t, s, n, "a", "b")
	seen := map[netip.Addr]bool{}
	for i := 0; i < 16; i++ {
		p := ps[i%2]
		a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: fmt.Sprintf("02:00:00:00:00:%02x", i)})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[a] || !n.Range().Contains(a) {
			t.Fatalf("allocation %d gave %s: duplicate or outside %s", i, a, FormatRange(n.Range()))
		}
		seen[a] = true
	}
	_, err := ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer})
	if !errors.Is(err, ErrNoFree) || !strings.Contains(err.Error(), "198.18.0.64/28") {
		t.Fatalf("exhausted pool: err = %v, want ErrNoFree naming the ip-range", err)
	}
	for a := range seen {
		owner := ps[0]
		if e, _ := s.Entry(ctx, n.Subnet, a); e.Used.Host == "b" {
			owner = ps[1]
		}
		if ok, err := ps[1-indexOf(ps, owner)].Release(ctx, n.Subnet, a); err == nil || ok {
			t.Fatalf("release of %s by the other host: released=%v err=%v, want refusal", a, ok, err)
		}
		if ok, err := owner.Release(ctx, n.Subnet, a); err != nil || !ok {
			t.Fatalf("release of %s by its owner: %v, %v", a, ok, err)
		}
		if ok, err := owner.Release(ctx, n.Subnet, a); err != nil || ok {
			t.Fatalf("second release of %s: released=%v err=%v, want a harmless no-op", a, ok, err)
		}
	}
	if got := len(s.pools[n.Subnet].free); got != 16 {
		t.Fatalf("free after releasing all: %d, want the 16 seeded", got)
	}
}

func indexOf(ps []*Pools, p *Pools) int {
	for i := range ps {
		if ps[i] == p {
			return i
		}
	}
	return -1
}

func TestAllocateSpecificAddress(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.0/25")
	ps := hosts(t, s, n, "a", "b")
	want := netip.MustParseAddr("198.18.0.200") // outside the ip-range, as Docker allows for --ip
	if _, err := ps[0].Allocate(ctx, n, want, Allocation{Kind: KindContainer}); err == nil {
		t.Fatal("--ip of an address never seeded was granted")
	} else if !strings.Contains(err.Error(), "outside the seeded ranges of pool 198.18.0.0/24 (198.18.0.1-198.18.0.127); to hand it out, seed it with `ipamctl init-range --subnet 198.18.0.0/24 --range 198.18.0.200`") {
		t.Fatalf("unseeded --ip: %v; want the ranges and the command that seeds it", err)
	}
	want = netip.MustParseAddr("198.18.0.10")
	if got, err := ps[0].Allocate(ctx, n, want, Allocation{Kind: KindContainer, MAC: "02:00:00:00:00:0a", Endpoint: "web"}); err != nil || got != want {
		t.Fatalf("--ip %s: %v, %v", want, got, err)
	}
	_, err := ps[1].Allocate(ctx, n, want, Allocation{Kind: KindContainer})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `host "a"`) || !strings.Contains(err.Error(), `endpoint "web"`) {
		t.Fatalf("duplicate --ip: %v, want an error naming host a and endpoint web", err)
	}
	for _, bad := range []string{"198.18.0.0", "198.18.0.255", "198.18.1.1"} {
		if _, err := ps[0].Allocate(ctx, n, netip.MustParseAddr(bad), Allocation{Kind: KindContainer}); err == nil {
			t.Errorf("--ip %s granted", bad)
		}
	}
}

func TestGatewayAndAuxAcrossHosts(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "")
	ps := hosts(t, s, n, "a", "b", "c")
	router := netip.MustParseAddr("198.18.0.1")
	gwA, gwB := netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12")

	for i, p := range ps {
		if err := p.Aux(ctx, n, router); err != nil {
			t.Fatalf("aux by host %d: %v", i, err)
		}
	}
	if err := ps[0].Aux(ctx, n, router); err != nil {
		t.Fatalf("second aux by host a: %v", err)
	}
	if _, err := ps[0].Gateway(ctx, n, gwA, true); err != nil {
		t.Fatal(err)
	}
	if _, err := ps[0].Gateway(ctx, n, gwA, true); err != nil {
		t.Fatalf("same host, same gateway, second network: %v", err)
	}
	if _, err := ps[1].Gateway(ctx, n, gwA, true); err == nil || !strings.Contains(err.Error(), `is the gateway of host "a"`) {
		t.Fatalf("host b claiming host a's gateway: %v", err)
	}
	if _, err := ps[1].Gateway(ctx, n, gwB, true); err != nil {
		t.Fatal(err)
	}
	if _, err := ps[2].Allocate(ctx, n, router, Allocation{Kind: KindContainer}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("container on the router address: %v", err)
	}
	if err := ps[2].Aux(ctx, n, gwB); err == nil {
		t.Fatal("aux on a gateway address was accepted")
	}
	e, _ := s.Entry(ctx, n.Subnet, router)
	if e.Free || e.Used.Kind != KindAux || e.Used.HolderList() != "ax2,b,c" {
		t.Fatalf("router entry = %+v, want aux held by ax2,b,c", e.Used)
	}
	// Each host's `network rm` releases once per reference; the router
	// returns to the free set (it was seeded) only after the last one.
	for _, p := range []*Pools{ps[0], ps[1], ps[0], ps[2]} {
		if e, _ := s.Entry(ctx, n.Subnet, router); e.Used == nil {
			t.Fatal("router released too early")
		}
		if ok, err := p.Release(ctx, n.Subnet, router); err != nil || !ok {
			t.Fatalf("release router by %s: %v %v", p.Host(), ok, err)
		}
	}
	if e, _ := s.Entry(ctx, n.Subnet, router); e.Used != nil || !e.Free {
		t.Fatalf("router after last release: %+v", e)
	}
	if ok, err := ps[1].Release(ctx, n.Subnet, gwA); err != nil || ok {
		t.Fatalf("host b releasing host a's gateway: released=%v err=%v, want a no-op", ok, err)
	}
	for range 2 {
		if ok, err := ps[0].Release(ctx, n.Subnet, gwA); err != nil || !ok {
			t.Fatalf("host a releasing its gateway: %v %v", ok, err)
		}
	}
	if e, _ := s.Entry(ctx, n.Subnet, gwA); e.Used != nil || !e.Free {
		t.Fatalf("gateway after release: %+v", e)
	}
}

func TestReleaseOutsideSeededRangesDrops(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.128/25")
	p := hosts(t, s, n, "a")[0]
	gw := netip.MustParseAddr("198.18.0.1") // the host's own address, never seeded
	if _, err := p.Gateway(ctx, n, gw, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Release(ctx, n.Subnet, gw); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, gw); e.Free || e.Used != nil {
		t.Fatalf("unseeded gateway after release: %+v, want neither free nor used", e)
	}
}

func TestGatewayWithoutAddressTakesFreeOne(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	p := hosts(t, s, n, "a")[0]
	gw, err := p.Gateway(ctx, n, netip.Addr{}, true)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := s.Entry(ctx, n.Subnet, gw)
	if e.Used == nil || e.Used.Kind != KindGateway || e.Used.Holders["a"] != 1 {
		t.Fatalf("gateway entry %+v", e.Used)
	}
	if ok, err := p.Release(ctx, n.Subnet, gw); err != nil || !ok {
		t.Fatalf("release: %v %v", ok, err)
	}
}

func TestAttachRules(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	strict := New(s, Config{Host: "a", RequireInit: true})
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.0/26")
	if err := strict.Attach(ctx, n); !errors.Is(err, ErrNotInitiated) || !strings.Contains(err.Error(), "ipamctl init-range --subnet 198.18.0.0/24 --range 198.18.0.1-198.18.0.63") {
		t.Fatalf("require-init: %v", err)
	}
	big := mustNetwork(t, "198.16.0.0/15", "")
	if err := New(s, Config{Host: "a"}).Attach(ctx, big); err == nil || !strings.Contains(err.Error(), "too many to seed") {
		t.Fatalf("auto-seeding a /15: %v", err)
	}
	hosts(t, s, n, "a")
	other := mustNetwork(t, "198.18.0.0/24", "198.18.0.128/26")
	if err := New(s, Config{Host: "b"}).Attach(ctx, other); err == nil || !strings.Contains(err.Error(), "ipamctl init-range --subnet 198.18.0.0/24 --range 198.18.0.128/26") {
		t.Fatalf("attaching an unseeded ip-range: %v", err)
	}
	if s.pools[n.Subnet].refs["a"] != 1 {
		t.Fatalf("refs = %v", s.pools[n.Subnet].refs)
	}
	if err := New(s, Config{Host: "a"}).Detach(ctx, n.Subnet); err != nil || s.pools[n.Subnet].refs["a"] != 0 {
		t.Fatalf("detach: %v, refs %v", err, s.pools[n.Subnet].refs)
	}
	if err := New(s, Config{Host: "a"}).Detach(ctx, netip.MustParsePrefix("198.18.9.0/24")); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("detach unknown: %v", err)
	}
	// An address in two pools could be handed out twice.
	for _, overlapping := range []string{"198.18.0.0/16", "198.18.0.128/25"} {
		if err := New(s, Config{Host: "a"}).Attach(ctx, mustNetwork(t, overlapping, "")); !errors.Is(err, ErrOverlap) {
			t.Fatalf("attaching %s next to 198.18.0.0/24: %v, want ErrOverlap", overlapping, err)
		}
	}
}

func TestAddRanges(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	p := New(s, Config{Host: "a"})
	subnet := netip.MustParsePrefix("198.18.0.0/24")
	set := func(rs ...string) *netipx.IPSet {
		var b netipx.IPSetBuilder
		for _, r := range rs {
			b.AddRange(netipx.MustParseIPRange(r))
		}
		s, _ := b.IPSet()
		return s
	}
	if added, err := p.AddRanges(ctx, subnet, set("198.18.0.10-198.18.0.19"), nil); err != nil || added != 10 {
		t.Fatalf("first: %d, %v", added, err)
	}
	n := mustNetwork(t, "198.18.0.0/24", "")
	if _, err := p.Allocate(ctx, n, netip.MustParseAddr("198.18.0.12"), Allocation{Kind: KindContainer}); err != nil {
		t.Fatal(err)
	}
	if added, err := p.AddRanges(ctx, subnet, set("198.18.0.10-198.18.0.24"), nil); err != nil || added != 5 {
		t.Fatalf("overlapping re-run: %d, %v; want 5 new, the used .12 untouched", added, err)
	}
	if e, _ := s.Entry(ctx, subnet, netip.MustParseAddr("198.18.0.12")); e.Free || e.Used == nil {
		t.Fatalf("used address touched by seeding: %+v", e)
	}
	m, _, _ := s.Meta(ctx, subnet)
	if FormatRanges(m.Ranges) != "198.18.0.10-198.18.0.24" || m.Seeding {
		t.Fatalf("meta after seeding: %s seeding=%v", FormatRanges(m.Ranges), m.Seeding)
	}
	if _, err := p.AddRanges(ctx, subnet, set("198.18.0.250-198.18.1.3"), nil); err == nil || !strings.Contains(err.Error(), "not inside subnet") {
		t.Fatalf("range outside the subnet: %v", err)
	}
}

// TestConcurrentAllocation: many goroutines of several hosts never get one
// address twice, and releasing everything restores the seeded set.
func TestConcurrentAllocation(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/22", "")
	ps := hosts(t, s, n, "a", "b", "c")
	var mu sync.Mutex
	got := map[netip.Addr]*Pools{}
	var wg sync.WaitGroup
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := ps[g%3]
			for range 40 {
				a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if got[a] != nil {
					t.Errorf("%s handed out twice", a)
				}
				got[a] = p
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for a, p := range got {
		if _, err := p.Release(ctx, n.Subnet, a); err != nil {
			t.Fatal(err)
		}
	}
	if free := len(s.pools[n.Subnet].free); free != 1022 || len(s.pools[n.Subnet].used) != 0 {
		t.Fatalf("after release: %d free, %d used; want 1022 and 0", free, len(s.pools[n.Subnet].used))
	}
}

// TestHostAddresses: host addresses recorded by ipamctl are never handed to
// containers; the first host using one as its gateway claims it, no other
// host may, and releasing the gateway leaves it with its host.
func TestHostAddresses(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	ps := hosts(t, s, n, "a", "b")
	hostA, hostB := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	for _, addr := range []netip.Addr{hostA, hostB} {
		if added, err := ps[0].AddHostAddr(ctx, n.Subnet, addr); err != nil || !added {
			t.Fatalf("AddHostAddr(%s): %v %v", addr, added, err)
		}
	}
	if added, err := ps[0].AddHostAddr(ctx, n.Subnet, hostA); err != nil || added {
		t.Fatalf("recording %s again: added=%v %v, want a no-op", hostA, added, err)
	}
	for range 14 - 2 {
		if a, err := ps[1].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer}); err != nil || a == hostA || a == hostB {
			t.Fatalf("container got %s, %v", a, err)
		}
	}
	if _, err := ps[1].Allocate(ctx, n, hostA, Allocation{Kind: KindContainer}); err == nil || !strings.Contains(err.Error(), "host address, not yet claimed") {
		t.Fatalf("--ip of a host address: %v", err)
	}
	if _, err := ps[1].Gateway(ctx, n, hostA, false); err == nil || !strings.Contains(err.Error(), `host "b" does not have`) {
		t.Fatalf("host b claiming an unclaimed host address it does not have: %v", err)
	}
	if _, err := ps[0].Gateway(ctx, n, hostA, true); err != nil {
		t.Fatalf("host a claiming its address as gateway: %v", err)
	}
	if _, err := ps[1].Gateway(ctx, n, hostA, true); err == nil || !strings.Contains(err.Error(), `host address of host "a"`) {
		t.Fatalf("host b taking host a's address as gateway: %v", err)
	}
	if _, err := ps[1].Gateway(ctx, n, hostB, true); err != nil {
		t.Fatal(err)
	}
	if ok, err := ps[0].Release(ctx, n.Subnet, hostA); err != nil || !ok {
		t.Fatalf("network rm on host a: %v %v", ok, err)
	}
	e, _ := s.Entry(ctx, n.Subnet, hostA)
	if e.Free || e.Used == nil || e.Used.Kind != KindHost || e.Used.Host != "a" || len(e.Used.Holders) != 0 {
		t.Fatalf("host a's address after its network is gone: %+v", e.Used)
	}
	if _, err := ps[1].Gateway(ctx, n, hostA, true); err == nil {
		t.Fatal("host b took host a's address once a's network was gone")
	}
	if _, err := ps[0].Evict(ctx, n.Subnet, hostB, false, KindHost); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("host release of an address in use as gateway: %v", err)
	}
	if was, err := ps[0].Evict(ctx, n.Subnet, hostA, false, KindHost); err != nil || was.Kind != KindHost {
		t.Fatalf("host release: %+v %v", was, err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, hostA); !e.Free {
		t.Fatalf("released host address should be free again (it is seeded): %+v", e)
	}
}

// endpoints are the two ways a request names its endpoint: the MAC dockerd
// draws when the driver asks for one, or else the name Docker >= 29 sends.
var endpoints = []struct {
	name string
	ep   Allocation
}{
	{"mac", Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"}},
	{"name", Allocation{Kind: KindContainer, Endpoint: "db"}},
}

// forEndpoints runs test for each way of naming an endpoint.
func forEndpoints(t *testing.T, test func(t *testing.T, ep Allocation)) {
	for _, e := range endpoints {
		t.Run(e.name, func(t *testing.T) { test(t, e.ep) })
	}
}

// owner is ep's owner-index key on host.
func owner(ep Allocation, host string) string {
	ep.Host = host
	return ep.Owner()
}

// TestRetriedRequestGetsItsOwnAddress: dockerd re-sends a request whose
// answer it lost (same host, same endpoint MAC or name); it must get the
// address it already holds, not a second one.
func TestRetriedRequestGetsItsOwnAddress(t *testing.T) { forEndpoints(t, testRetriedRequest) }

func testRetriedRequest(t *testing.T, ep Allocation) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "")
	ps := hosts(t, s, n, "a", "b")
	first, err := ps[0].Allocate(ctx, n, netip.Addr{}, ep)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ps[0].Allocate(ctx, n, netip.Addr{}, ep); err != nil || again != first {
		t.Fatalf("retry got %s, %v; want %s again", again, err, first)
	}
	if other, err := ps[1].Allocate(ctx, n, netip.Addr{}, ep); err != nil || other == first {
		t.Fatalf("the same endpoint id on another host got %s, %v; want its own address", other, err)
	}
	another := netip.MustParseAddr("198.18.0.77")
	if another == first { // first is a random pick
		another = another.Next()
	}
	if _, err := ps[0].Allocate(ctx, n, another, ep); err == nil || !strings.Contains(err.Error(), "already holds "+first.String()) {
		t.Fatalf("--ip for an endpoint that holds another address: %v", err)
	}
	if got, err := ps[0].Allocate(ctx, n, first, ep); err != nil || got != first {
		t.Fatalf("--ip retry: %s, %v", got, err)
	}
	if _, err := ps[0].Release(ctx, n.Subnet, first); err != nil {
		t.Fatal(err)
	}
	if _, held, _ := s.Owned(ctx, n.Subnet, owner(ep, "a")); held {
		t.Fatal("owner index kept after release")
	}
}

// commitThenFail commits claims but reports a timeout, as etcd does when
// the answer of an applied transaction is lost. A non-nil gate holds the
// background undo (its Owned lookup) until closed.
type commitThenFail struct {
	*memStore
	gate chan struct{}
}

func (s commitThenFail) Claim(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation, takeDelayed bool) (Claim, error) {
	c, err := s.memStore.Claim(ctx, subnet, addr, a, takeDelayed)
	if err == nil && c.Taken {
		return Claim{}, context.DeadlineExceeded
	}
	return c, err
}

func (s commitThenFail) Owned(ctx context.Context, subnet netip.Prefix, owner string) (netip.Addr, bool, error) {
	if s.gate != nil {
		<-s.gate
	}
	return s.memStore.Owned(ctx, subnet, owner)
}

// TestClaimWithUnknownOutcomeIsUndone: the claim committed but the plugin
// answered dockerd with an error; the address must not stay used.
func TestClaimWithUnknownOutcomeIsUndone(t *testing.T) { forEndpoints(t, testUnknownOutcomeUndone) }

func testUnknownOutcomeUndone(t *testing.T, ep Allocation) {
	ctx := context.Background()
	mem := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "")
	p := hosts(t, commitThenFail{memStore: mem}, n, "a")[0]
	if _, err := p.Allocate(ctx, n, netip.Addr{}, ep); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("allocate: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mem.mu.Lock()
		used := len(mem.pools[n.Subnet].used)
		mem.mu.Unlock()
		if used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the committed claim was not undone")
		}
	}
}

// TestRetryAfterFailedAttemptKeepsTheAddress: an attempt committed but was
// answered with an error, and the client retried with the same endpoint
// before the background undo ran: the retry's address must stay used.
func TestRetryAfterFailedAttemptKeepsTheAddress(t *testing.T) {
	forEndpoints(t, testRetryAfterFailedAttempt)
}

func testRetryAfterFailedAttempt(t *testing.T, ep Allocation) {
	ctx := context.Background()
	mem := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "")
	gate := make(chan struct{})
	failing := hosts(t, commitThenFail{memStore: mem, gate: gate}, n, "a")[0]
	ok := New(mem, Config{Host: "a"})
	if _, err := failing.Allocate(ctx, n, netip.Addr{}, ep); err == nil {
		t.Fatal("want the injected failure")
	}
	committed, _, _ := mem.Owned(ctx, n.Subnet, owner(ep, "a"))
	got, err := ok.Allocate(ctx, n, netip.Addr{}, ep)
	if err != nil || got != committed {
		t.Fatalf("retry got %s, %v; want the committed %s", got, err, committed)
	}
	close(gate) // now the undo of the failed attempt runs
	time.Sleep(300 * time.Millisecond)
	if e, _ := mem.Entry(ctx, n.Subnet, got); e.Used == nil {
		t.Fatalf("the undo of the failed attempt freed %s, which the retry holds", got)
	}
}

// TestReuseDelay: a released container address is not handed out again
// automatically until the delay has passed, while a request that names it
// (`--ip`: a restart, a recreate, a reconnect, a move to another host)
// takes it at once.
func TestReuseDelay(t *testing.T) {
	const (
		released = "198.18.0.1" // the first address of the /30, released at the start of each case
		other    = "198.18.0.2"
	)
	for _, tc := range []struct {
		name      string
		host      string        // who asks
		want      string        // "" for automatic allocation
		after     time.Duration // how long after the release
		skew      time.Duration // how far the asking host's clock is off
		takeOther bool          // the other address is taken first, so only the released one is free
		got       string        // the address handed out, or "" when refused
		err       string        // part of the refusal
	}{
		{name: "automatic, within the delay", host: "a", after: time.Second, got: other},
		{name: "automatic, only the delayed one left", host: "a", after: time.Second, takeOther: true, err: "the only free ones are in the pool's reuse delay (ipamctl pool show); the first is due in 59s"},
		{name: "automatic, after the delay", host: "a", after: time.Minute + time.Second, takeOther: true, got: released},
		// The store times the delay: hosts' clocks do not shorten or lengthen it.
		{name: "automatic, asker's clock ahead", host: "b", after: time.Second, skew: 2 * time.Minute, takeOther: true, err: "the first is due in 59s"},
		{name: "automatic, asker's clock behind, after the delay", host: "b", after: time.Minute + time.Second, skew: -2 * time.Minute, takeOther: true, got: released},
		{name: "explicit, same host (restart, recreate, reconnect)", host: "a", want: released, after: time.Millisecond, got: released},
		{name: "explicit, another host (a move)", host: "b", want: released, after: time.Second, got: released},
		{name: "explicit, after the delay", host: "b", want: released, after: time.Hour, got: released},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := newMemStore()
			n := mustNetwork(t, "198.18.0.0/30", "") // two addresses
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			ps := map[string]*Pools{}
			s.clock = func() time.Time { return clock }
			for _, h := range []string{"a", "b"} {
				ps[h] = New(s, Config{Host: h, ReuseDelay: time.Minute})
				ps[h].now = func() time.Time {
					if h == tc.host {
						return clock.Add(tc.skew)
					}
					return clock
				}
				if err := ps[h].Attach(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			x := netip.MustParseAddr(released)
			if _, err := ps["a"].Allocate(ctx, n, x, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"}); err != nil {
				t.Fatal(err)
			}
			if _, err := ps["a"].Release(ctx, n.Subnet, x); err != nil {
				t.Fatal(err)
			}
			if tc.takeOther {
				if _, err := ps["a"].Allocate(ctx, n, netip.MustParseAddr(other), Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02"}); err != nil {
					t.Fatal(err)
				}
			}
			clock = clock.Add(tc.after)
			var want netip.Addr
			if tc.want != "" {
				want = netip.MustParseAddr(tc.want)
			}
			got, err := ps[tc.host].Allocate(ctx, n, want, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:03"})
			switch {
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("got %s, %v; want a refusal saying %q", got, err, tc.err)
			case tc.err == "" && (err != nil || got != netip.MustParseAddr(tc.got)):
				t.Fatalf("got %s, %v; want %s", got, err, tc.got)
			}
		})
	}
}

// countingStore counts Entry reads.
type countingStore struct {
	*memStore
	reads atomic.Int64
}

func (s *countingStore) Entry(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (Entry, error) {
	s.reads.Add(1)
	return s.memStore.Entry(ctx, subnet, addr)
}

// TestReleaseOfOwnClaimNeedsNoRead: an address this process claimed is
// released with one compare-and-swap from what the claim wrote; when it
// changed hands meanwhile, the compare catches it and the release leaves
// the new holder alone.
func TestReleaseOfOwnClaimNeedsNoRead(t *testing.T) {
	ctx := context.Background()
	s := &countingStore{memStore: newMemStore()}
	n := mustNetwork(t, "198.18.0.0/24", "")
	ps := hosts(t, s, n, "a", "b")
	a, err := ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	before := s.reads.Load()
	if released, err := ps[0].Release(ctx, n.Subnet, a); err != nil || !released {
		t.Fatalf("release: %v %v", released, err)
	}
	if reads := s.reads.Load() - before; reads != 0 {
		t.Errorf("releasing its own claim read %d entries", reads)
	}

	// Claimed by a, evicted by the operator, claimed by b: a's late
	// release must not free b's address.
	a, err = ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(s, Config{Host: "operator"}).Evict(ctx, n.Subnet, a, false, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ps[1].Allocate(ctx, n, a, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:03"}); err != nil {
		t.Fatal(err)
	}
	if released, err := ps[0].Release(ctx, n.Subnet, a); !errors.Is(err, ErrUnavailable) || released {
		t.Fatalf("stale release by a: released %v, %v; want refused", released, err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, a); e.Used == nil || e.Used.Host != "b" {
		t.Fatalf("b's address after a's stale release: %+v", e)
	}
}

// TestRememberedClaimsAreBounded: a daemon handing out more addresses than
// maxRemembered keeps no more entries than that; the others' releases read
// once, and every release still succeeds.
func TestRememberedClaimsAreBounded(t *testing.T) {
	ctx := context.Background()
	s := &countingStore{memStore: newMemStore()}
	n := mustNetwork(t, "198.18.0.0/19", "")
	p := hosts(t, s, n, "a")[0]
	const beyond = 10
	var got []netip.Addr
	for i := range maxRemembered + beyond {
		a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: fmt.Sprintf("02:42:00:00:%02x:%02x", i>>8, i&0xff)})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	if r := p.remembered.Load(); r != maxRemembered {
		t.Fatalf("%d claims remembered, want %d", r, maxRemembered)
	}
	before := s.reads.Load()
	for _, a := range got {
		if released, err := p.Release(ctx, n.Subnet, a); err != nil || !released {
			t.Fatalf("release of %s: %v %v", a, released, err)
		}
	}
	if reads, r := s.reads.Load()-before, p.remembered.Load(); reads != beyond || r != 0 {
		t.Errorf("releases read %d entries (want %d), %d remembered after (want 0)", reads, beyond, r)
	}
}
