package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestFloatingAddress: a reserved address follows its service from host a
// to host b; automatic allocation never gets it, b is refused while a
// holds it, and release returns it to the reservation at once.
func TestFloatingAddress(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/29", "") // .1-.6
	ps := hosts(t, s, n, "a", "b")
	op := New(s, Config{Host: "operator"})
	if err := op.Set(ctx, n.Subnet, Settings{ReuseDelay: ptr(time.Hour)}); err != nil { // must not apply to the reservation
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.18.0.3")
	if u, err := op.Reserve(ctx, n.Subnet, vip, "web"); err != nil || u.Kind != KindReserved || u.Reservation != "web" {
		t.Fatalf("reserve: %+v, %v", u, err)
	}
	for i := range 5 {
		got, err := ps[i%2].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: fmt.Sprintf("02:42:00:00:00:%02x", i)})
		if err != nil || got == vip {
			t.Fatalf("automatic allocation %d: %s, %v; want any address but %s", i, got, err, vip)
		}
	}
	if _, err := ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:01:00"}); !errors.Is(err, ErrNoFree) {
		t.Fatalf("with only the reserved address left: %v, want ErrNoFree", err)
	}

	web := Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:aa", Endpoint: "web"}
	if got, err := ps[0].Allocate(ctx, n, vip, web); err != nil || got != vip {
		t.Fatalf("--ip %s on a: %s, %v", vip, got, err)
	}
	if got, err := ps[0].Allocate(ctx, n, vip, web); err != nil || got != vip {
		t.Fatalf("retried --ip on a: %s, %v", got, err)
	}
	_, err := ps[1].Allocate(ctx, n, vip, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:bb"})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `container of host "a"`) ||
		!strings.Contains(err.Error(), `reserved as "web"`) || !strings.Contains(err.Error(), "since ") {
		t.Fatalf("--ip on b while a holds it: %v; want the holder named with host and time", err)
	}
	if released, err := ps[0].Release(ctx, n.Subnet, vip); err != nil || !released {
		t.Fatalf("release on a: %v, %v", released, err)
	}
	e, _ := s.Entry(ctx, n.Subnet, vip)
	if e.Free || e.Used == nil || e.Used.Kind != KindReserved || e.Used.Reservation != "web" {
		t.Fatalf("after release: %+v; want the idle reservation", e)
	}
	if _, held, _ := s.Owned(ctx, n.Subnet, "a/"+web.MAC); held {
		t.Fatal("owner index kept after the release")
	}
	if got, err := ps[1].Allocate(ctx, n, vip, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:bb"}); err != nil || got != vip {
		t.Fatalf("--ip on b after a released it: %s, %v; want it at once (no reuse delay)", got, err)
	}
	if a, held, _ := s.Owned(ctx, n.Subnet, "b/"+"02:42:00:00:00:bb"); !held || a != vip {
		t.Fatal("no owner index for b's endpoint")
	}

	// The operator's release returns it to the reservation too.
	if was, err := op.Evict(ctx, n.Subnet, vip, false, ""); err != nil || was.Host != "b" {
		t.Fatalf("evict: %+v, %v", was, err)
	}
	if _, err := op.Evict(ctx, n.Subnet, vip, true, ""); err == nil || !strings.Contains(err.Error(), "ipamctl reserve rm 198.18.0.0/29 198.18.0.3") {
		t.Fatalf("evict of the idle reservation: %v; want the command that ends it", err)
	}

	// reserve rm while held: the next release frees it (with the delay).
	if _, err := ps[1].Allocate(ctx, n, vip, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:bb"}); err != nil {
		t.Fatal(err)
	}
	if u, err := op.Unreserve(ctx, n.Subnet, vip); err != nil || u.Kind != KindContainer || u.Reservation != "" {
		t.Fatalf("unreserve while held: %+v, %v", u, err)
	}
	if _, err := ps[1].Release(ctx, n.Subnet, vip); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, vip); !e.Free || e.Used != nil {
		t.Fatalf("after unreserve and release: %+v; want free", e)
	}
	if _, err := op.Unreserve(ctx, n.Subnet, vip); err == nil || !strings.Contains(err.Error(), "not reserved") {
		t.Fatalf("unreserve of a free address: %v", err)
	}
	if got := Check(snapshotOf(t, s, n.Subnet)); len(got) != 0 {
		t.Fatalf("check: %+v", got)
	}
}

// TestReserveHeldAddress: reserving the address a container holds pins it:
// when the container lets go, the reservation stays.
func TestReserveHeldAddress(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	p := hosts(t, s, n, "a")[0]
	got, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := New(s, Config{Host: "operator"}).Reserve(ctx, n.Subnet, got, "db"); err != nil || u.Kind != KindContainer || u.Host != "a" || u.Reservation != "db" {
		t.Fatalf("reserve held: %+v, %v", u, err)
	}
	if _, err := p.Release(ctx, n.Subnet, got); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, got); e.Used == nil || e.Used.Kind != KindReserved || e.Used.Reservation != "db" {
		t.Fatalf("after release: %+v; want the idle reservation", e)
	}
}

// TestAnycastAddress: every host may hold an anycast address once; a
// second endpoint on one host is refused, a retry of the first is not,
// and a release drops only its host.
func TestAnycastAddress(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	ps := hosts(t, s, n, "a", "b", "c")
	op := New(s, Config{Host: "operator"})
	acast := netip.MustParseAddr("198.18.0.9")
	if _, err := op.AddAnycast(ctx, n.Subnet, acast); err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		ep := fuzzEndpoint(byte(i + 1))
		for try := range 2 { // the second is a retry
			if got, err := p.Allocate(ctx, n, acast, ep); err != nil || got != acast {
				t.Fatalf("host %s try %d: %s, %v", p.Host(), try, got, err)
			}
		}
	}
	if _, err := ps[0].Allocate(ctx, n, acast, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:ff"}); !errors.Is(err, ErrUnavailable) ||
		!strings.Contains(err.Error(), `already held on host "a"`) {
		t.Fatalf("second endpoint on a: %v", err)
	}
	if _, err := ps[0].Gateway(ctx, n, acast, true); err == nil {
		t.Fatal("an anycast address became a gateway")
	}
	if err := op.RemoveAnycast(ctx, n.Subnet, acast, false); err == nil || !strings.Contains(err.Error(), "hosts a,b,c") {
		t.Fatalf("anycast rm while held: %v", err)
	}
	if released, err := ps[1].Release(ctx, n.Subnet, acast); err != nil || !released {
		t.Fatalf("release on b: %v %v", released, err)
	}
	e, _ := s.Entry(ctx, n.Subnet, acast)
	if e.Used == nil || e.Used.HolderList() != "a,c" || len(e.Used.MACs) != 2 {
		t.Fatalf("after b's release: %+v; want a and c still holding", e.Used)
	}
	if got := Check(snapshotOf(t, s, n.Subnet)); len(got) != 0 {
		t.Fatalf("check: %+v", got)
	}
	if err := op.RemoveAnycast(ctx, n.Subnet, acast, true); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, acast); !e.Free {
		t.Fatalf("after anycast rm --force: %+v; want free", e)
	}
}

// commitThenFailSwap commits swaps but reports a timeout.
type commitThenFailSwap struct{ *memStore }

func (s commitThenFailSwap) Swap(ctx context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (Entry, bool, error) {
	fresh, ok, err := s.memStore.Swap(ctx, subnet, cur, next, guards...)
	if err == nil && ok {
		return Entry{}, false, context.DeadlineExceeded
	}
	return fresh, ok, err
}

// TestTakenReservationWithUnknownOutcomeIsUndone: taking a reservation
// committed, but dockerd got an error; the reservation must become idle
// again, not free.
func TestTakenReservationWithUnknownOutcomeIsUndone(t *testing.T) {
	ctx := context.Background()
	mem := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	p := hosts(t, commitThenFailSwap{mem}, n, "a")[0]
	vip := netip.MustParseAddr("198.18.0.3")
	if _, err := New(mem, Config{Host: "operator"}).Reserve(ctx, n.Subnet, vip, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Allocate(ctx, n, vip, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("allocate: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		e, _ := mem.Entry(ctx, n.Subnet, vip)
		if e.Used != nil && e.Used.Kind == KindReserved && !e.Free {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back to the idle reservation: %+v", e)
		}
	}
}

// TestReleaseListed: gc's release frees an address only while its record
// is the one listed and every guard holds, as its holder's release would
// (into the pool's reuse delay, a reservation back to idle).
func TestReleaseListed(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/29", "")
	h := hosts(t, s, n, "h")[0]
	gc := New(s, Config{Host: "operator"})
	if err := gc.Set(ctx, n.Subnet, Settings{ReuseDelay: ptr(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("198.18.0.1")
	if _, err := h.Allocate(ctx, n, a, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"}); err != nil {
		t.Fatal(err)
	}
	listed, _ := s.Entry(ctx, n.Subnet, a)
	dead := true
	var stillDead Guard = memGuard(func() bool { return dead })

	dead = false // the host came back
	if ok, err := gc.ReleaseListed(ctx, n.Subnet, a, listed.Version.Used, stillDead); ok || err != nil {
		t.Fatalf("release with a failing guard: %v, %v", ok, err)
	}
	dead = true
	if ok, err := gc.ReleaseListed(ctx, n.Subnet, a, listed.Version.Used-1, stillDead); ok || err != nil {
		t.Fatalf("release of another record: %v, %v", ok, err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, a); e.Used == nil {
		t.Fatal("the address was released by a refused call")
	}
	if ok, err := gc.ReleaseListed(ctx, n.Subnet, a, listed.Version.Used, stillDead); !ok || err != nil {
		t.Fatalf("release: %v, %v", ok, err)
	}
	if e, _ := s.Entry(ctx, n.Subnet, a); e.Used != nil || !e.Free {
		t.Fatalf("after the release: %+v", e)
	}
	if d, ok, _ := s.NextReuse(ctx, n.Subnet); !ok || d < 59*time.Minute {
		t.Fatalf("next reuse in %s (%v), want the pool's hour", d, ok)
	}
}
