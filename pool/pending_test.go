package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
)

// fullStore refuses every Swap with ErrNoSpace while full is set, as
// etcd does every write under its NOSPACE alarm.
type fullStore struct {
	*memStore
	full *atomic.Bool
}

func (s fullStore) Swap(ctx context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (Entry, bool, error) {
	if s.full.Load() {
		return Entry{}, false, fmt.Errorf("database space exceeded: %w", ErrNoSpace)
	}
	return s.memStore.Swap(ctx, subnet, cur, next, guards...)
}

// TestPendingRelease: a release refused for want of space is kept as the
// record it was for, and applied later it releases that record, even a
// shared one whose first holder changed meanwhile, and never a new one.
func TestPendingRelease(t *testing.T) {
	ctx := context.Background()
	n := mustNetwork(t, "198.18.0.0/24", "")
	mac := "02:42:00:00:00:01"
	// refuse makes host a's release of addr fail for want of space and
	// returns what is kept of it.
	refuse := func(t *testing.T, s fullStore, a *Pools, addr netip.Addr) Pending {
		t.Helper()
		s.full.Store(true)
		defer s.full.Store(false)
		if _, err := a.Release(ctx, n.Subnet, addr); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("release with the store full: %v, want ErrNoSpace", err)
		}
		r, ok, err := a.PendingRelease(ctx, n.Subnet, addr)
		if err != nil || !ok || r.Addr != addr || r.Subnet != n.Subnet {
			t.Fatalf("PendingRelease(%s) = %+v %v %v", addr, r, ok, err)
		}
		return r
	}
	setup := func(t *testing.T) (fullStore, *Pools, *Pools) {
		s := fullStore{newMemStore(), new(atomic.Bool)}
		ps := hosts(t, s, n, "a", "b")
		return s, ps[0], ps[1]
	}

	t.Run("container", func(t *testing.T) {
		s, a, _ := setup(t)
		addr, err := a.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac})
		if err != nil {
			t.Fatal(err)
		}
		r := refuse(t, s, a, addr)
		if released, err := a.ReleasePending(ctx, r); err != nil || !released {
			t.Fatalf("ReleasePending: %v %v", released, err)
		}
		if e, _ := s.Entry(ctx, n.Subnet, addr); e.Used != nil || !e.Free {
			t.Fatalf("%s after the kept release: %+v", addr, e)
		}
		if released, err := a.ReleasePending(ctx, r); err != nil || released {
			t.Fatalf("ReleasePending again: %v %v, want nothing released", released, err)
		}
	})
	t.Run("container claimed anew", func(t *testing.T) {
		s, a, _ := setup(t)
		addr, err := a.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac})
		if err != nil {
			t.Fatal(err)
		}
		r := refuse(t, s, a, addr)
		// The operator freed it, and the same container took it again by --ip.
		if _, err := a.Evict(ctx, n.Subnet, addr, false, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Allocate(ctx, n, addr, Allocation{Kind: KindContainer, MAC: mac}); err != nil {
			t.Fatal(err)
		}
		if released, err := a.ReleasePending(ctx, r); err != nil || released {
			t.Fatalf("ReleasePending of the old record: %v %v, want nothing released", released, err)
		}
		if e, _ := s.Entry(ctx, n.Subnet, addr); e.Used == nil || e.Used.MAC != mac {
			t.Fatalf("the new holder of %s lost it: %+v", addr, e)
		}
	})
	t.Run("shared, first holder gone", func(t *testing.T) {
		s, a, b := setup(t)
		router := netip.MustParseAddr("198.18.0.1")
		for _, p := range []*Pools{b, a} {
			if err := p.Aux(ctx, n, router); err != nil {
				t.Fatal(err)
			}
		}
		r := refuse(t, s, a, router)
		if _, err := b.Release(ctx, n.Subnet, router); err != nil {
			t.Fatal(err)
		}
		if released, err := a.ReleasePending(ctx, r); err != nil || !released {
			t.Fatalf("ReleasePending: %v %v", released, err)
		}
		if e, _ := s.Entry(ctx, n.Subnet, router); e.Used != nil {
			t.Fatalf("router after both hosts let go: %+v", e.Used)
		}
	})
	t.Run("nothing to release", func(t *testing.T) {
		_, a, _ := setup(t)
		if r, ok, err := a.PendingRelease(ctx, n.Subnet, netip.MustParseAddr("198.18.0.9")); err != nil || ok {
			t.Fatalf("PendingRelease of a free address: %+v %v %v", r, ok, err)
		}
	})
}
