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

// gatedSwaps holds every Swap (a release's write) until gate is closed;
// fail, when set, is the error the Swap then returns without writing.
type gatedSwaps struct {
	*memStore
	gate chan struct{}
	fail error
}

func (s gatedSwaps) Swap(ctx context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (Entry, bool, error) {
	select {
	case <-s.gate:
	case <-ctx.Done():
		return Entry{}, false, ctx.Err()
	}
	if s.fail != nil {
		return Entry{}, false, s.fail
	}
	return s.memStore.Swap(ctx, subnet, cur, next, guards...)
}

// refusedWhileReleasing asserts that claim, given a short deadline, waits
// for the release in flight rather than deciding on the address's old record.
func refusedWhileReleasing(t *testing.T, what string, claim func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := claim(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "release in flight") {
		t.Errorf("%s while the release is in flight: %v; want it to wait for the release", what, err)
	}
}

// TestReleaseBehind: a release answered before its commit lets other
// claims go on, and makes wait exactly what could tell: claims of the same
// address (--ip, an aux or gateway reference) or for the same endpoint,
// another release of it, and the host's Detach of the pool.
func TestReleaseBehind(t *testing.T) {
	ctx := context.Background()
	mem := newMemStore()
	s := gatedSwaps{memStore: mem, gate: make(chan struct{})}
	n := mustNetwork(t, "198.18.0.0/24", "")
	p := hosts(t, s, n, "a")[0]
	mac := "02:42:00:00:00:01"
	held, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	outcome := make(chan error, 1)
	if !p.ReleaseBehind(n.Subnet, held, time.Minute, func(released bool, err error) error {
		if err == nil && !released {
			err = errors.New("nothing released")
		}
		outcome <- err
		return err
	}) {
		t.Fatal("ReleaseBehind refused a container address this process claimed")
	}
	if inFlight := p.ReleasesInFlight(); inFlight != 1 {
		t.Fatalf("releases in flight: %d, want 1", inFlight)
	}

	// Another endpoint's claim does not wait.
	other, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02"})
	if err != nil || other == held {
		t.Fatalf("another endpoint's claim during the release: %s, %v", other, err)
	}
	// Without the wait these would see the old record: --ip refused as in
	// use, the same MAC taken for a retry and given the address being
	// released.
	refusedWhileReleasing(t, "--ip of the address", func(ctx context.Context) error {
		_, err := p.Allocate(ctx, n, held, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:03"})
		return err
	})
	refusedWhileReleasing(t, "the same endpoint", func(ctx context.Context) error {
		_, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac})
		return err
	})
	refusedWhileReleasing(t, "the pool's Detach", func(ctx context.Context) error {
		return p.Detach(ctx, n.Subnet)
	})
	refusedWhileReleasing(t, "the address as gateway", func(ctx context.Context) error {
		return p.Aux(ctx, n, held)
	})
	refusedWhileReleasing(t, "a second release", func(ctx context.Context) error {
		_, err := p.Release(ctx, n.Subnet, held)
		return err
	})

	close(s.gate)
	if err := <-outcome; err != nil {
		t.Fatalf("the release: %v", err)
	}
	if err := p.WaitReleases(ctx); err != nil {
		t.Fatal(err)
	}
	if inFlight, failed := p.ReleasesInFlight(), p.ReleasesFailed(); inFlight != 0 || failed != 0 {
		t.Fatalf("after the release: %d in flight, %d failed", inFlight, failed)
	}
	if got, err := p.Allocate(ctx, n, held, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:05"}); err != nil || got != held {
		t.Fatalf("--ip of the address after its release: %s, %v", got, err)
	}
}

// TestReleaseBehindOnlyForOwnContainers: gateways, sticky records (their
// name moves to another host at once), addresses this process did not
// claim, and any release once WaitReleases has begun, are released as
// before, after the commit.
func TestReleaseBehindOnlyForOwnContainers(t *testing.T) {
	ctx := context.Background()
	mem := newMemStore()
	n := mustNetwork(t, "198.18.0.0/24", "")
	ps := hosts(t, mem, n, "a", "b")
	must := func(a netip.Addr, err error) netip.Addr {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	container := func(p *Pools, mac, sticky string) netip.Addr {
		return must(p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac, Sticky: sticky}))
	}
	behind := func(what string, addr netip.Addr) {
		if ps[0].ReleaseBehind(n.Subnet, addr, time.Minute, func(bool, error) error { return nil }) {
			t.Errorf("the release of %s went behind", what)
		}
	}
	behind("a gateway", must(ps[0].Gateway(ctx, n, netip.Addr{}, false)))
	behind("another host's container", container(ps[1], "02:42:00:00:00:01", ""))
	behind("a sticky record", container(ps[0], "02:42:00:00:00:02", "db"))
	plain := container(ps[0], "02:42:00:00:00:03", "")
	if err := ps[0].WaitReleases(ctx); err != nil {
		t.Fatal(err)
	}
	behind("a container after WaitReleases", plain)
}

// TestReleaseBehindFailure: a release that fails after its answer is
// counted, and leaves the address used (for gc), never freed twice.
func TestReleaseBehindFailure(t *testing.T) {
	ctx := context.Background()
	mem := newMemStore()
	gate := make(chan struct{})
	close(gate)
	s := gatedSwaps{memStore: mem, gate: gate, fail: errors.New("etcd unreachable")}
	n := mustNetwork(t, "198.18.0.0/24", "")
	p := hosts(t, s, n, "a")[0]
	a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.ReleaseBehind(n.Subnet, a, time.Second, func(_ bool, err error) error { return err }) {
		t.Fatal("not started")
	}
	if err := p.WaitReleases(ctx); err != nil {
		t.Fatal(err)
	}
	if failed := p.ReleasesFailed(); failed != 1 {
		t.Errorf("failed releases: %d, want 1", failed)
	}
	if e, _ := mem.Entry(ctx, n.Subnet, a); e.Used == nil {
		t.Errorf("%s is no longer used after a failed release: %+v", a, e)
	}
}

// TestWaitReleasesIsBounded: shutdown does not hang on a release etcd
// never answers.
func TestWaitReleasesIsBounded(t *testing.T) {
	ctx := context.Background()
	s := gatedSwaps{memStore: newMemStore(), gate: make(chan struct{})}
	defer close(s.gate)
	n := mustNetwork(t, "198.18.0.0/24", "")
	p := hosts(t, s, n, "a")[0]
	a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	p.ReleaseBehind(n.Subnet, a, time.Minute, func(_ bool, err error) error { return err })
	wait, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := p.WaitReleases(wait); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReleases with a release stuck: %v", err)
	}
}

// TestMoveToAnotherHostDuringRelease: a container moving to another host
// with its --ip may start there before the first host's release, answered
// already, has committed: the claim looks again before refusing. A holder
// that stays is still refused, after otherHostRelease.
func TestMoveToAnotherHostDuringRelease(t *testing.T) {
	ctx := context.Background()
	s := gatedSwaps{memStore: newMemStore(), gate: make(chan struct{})}
	n := mustNetwork(t, "198.18.0.0/24", "")
	ps := hosts(t, s, n, "a", "b")
	ps[1].lookAgainFor = 200 * time.Millisecond
	first, err := ps[0].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := ps[1].Allocate(ctx, n, first, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a held address claimed by another host: %v", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("refused after %s, before looking again for 200ms", took)
	}
	ps[0].ReleaseBehind(n.Subnet, first, time.Minute, func(_ bool, err error) error { return err })
	time.AfterFunc(20*time.Millisecond, func() { close(s.gate) })
	got, err := ps[1].Allocate(ctx, n, first, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:03"})
	if err != nil || got != first {
		t.Fatalf("moved to host b while a's release committed: %s, %v; want %s", got, err, first)
	}
}

// TestFullRangeWaitsForOwnRelease: with no free address left but one of
// this host's releases in flight, a claim waits for it instead of
// answering "no free address" (a pool without reuse delay).
func TestFullRangeWaitsForOwnRelease(t *testing.T) {
	ctx := context.Background()
	s := gatedSwaps{memStore: newMemStore(), gate: make(chan struct{})}
	n := mustNetwork(t, "198.18.0.0/29", "")
	p := hosts(t, s, n, "a")[0]
	var first netip.Addr
	for i := range 6 {
		a, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: fmt.Sprintf("02:42:00:00:00:%02x", i)})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = a
		}
	}
	p.ReleaseBehind(n.Subnet, first, time.Minute, func(_ bool, err error) error { return err })
	time.AfterFunc(20*time.Millisecond, func() { close(s.gate) })
	got, err := p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:01:00"})
	if err != nil || got != first {
		t.Fatalf("a claim on a full range while its release is in flight: %s, %v; want %s", got, err, first)
	}
}
