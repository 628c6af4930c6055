package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// flakyStore fails Claim, Swap and AddRef as etcd does during an
// election: a failing call either never reaches the store or commits and
// loses its answer (commit).
type flakyStore struct {
	*memStore
	mu     sync.Mutex
	fails  map[string]int // method → how many of its next calls fail
	calls  map[string]int
	commit bool
	err    error
	refOps map[string]bool // AddRef ops that committed: the contract applies each once
}

var errElection = fmt.Errorf("%w: etcdserver: request timed out", ErrTransient)

// called counts method's calls; a background undo may be making one.
func (s *flakyStore) called(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func (s *flakyStore) failing(method string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[method]++
	if s.fails[method] == 0 {
		return false
	}
	s.fails[method]--
	return true
}

func (s *flakyStore) Claim(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation, takeDelayed bool) (Claim, error) {
	if !s.failing("Claim") {
		return s.memStore.Claim(ctx, subnet, addr, a, takeDelayed)
	}
	if s.commit {
		_, _ = s.memStore.Claim(ctx, subnet, addr, a, takeDelayed) // its answer is lost: the error below is it
	}
	return Claim{}, s.err
}

func (s *flakyStore) Swap(ctx context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (Entry, bool, error) {
	if !s.failing("Swap") {
		return s.memStore.Swap(ctx, subnet, cur, next, guards...)
	}
	if s.commit {
		_, _, _ = s.memStore.Swap(ctx, subnet, cur, next, guards...) // its answer is lost: the error below is it
	}
	return Entry{}, false, s.err
}

func (s *flakyStore) AddRef(ctx context.Context, subnet netip.Prefix, host string, delta int, op string) (int, error) {
	failing := s.failing("AddRef")
	s.mu.Lock()
	done := s.refOps[op]
	if !failing || s.commit {
		s.refOps[op] = true
	}
	s.mu.Unlock()
	switch {
	case failing && !s.commit:
		return 0, s.err
	case done:
		return s.memStore.AddRef(ctx, subnet, host, 0, op)
	}
	n, err := s.memStore.AddRef(ctx, subnet, host, delta, op)
	if failing {
		return 0, s.err // committed, answer lost
	}
	return n, err
}

func (s *flakyStore) used(subnet netip.Prefix) map[netip.Addr]Allocation {
	s.memStore.mu.Lock()
	defer s.memStore.mu.Unlock()
	out := map[netip.Addr]Allocation{}
	for a, u := range s.memStore.pools[subnet].used {
		out[a] = u.a
	}
	return out
}

const forever = 1 << 30

// TestTransientErrors: a request retries a store call that failed with
// ErrTransient only where a retry is safe when the failed attempt may have
// committed, and within its deadline.
func TestTransientErrors(t *testing.T) {
	const mac = "02:42:00:00:00:01"
	gw := netip.MustParseAddr("198.18.0.1")
	for _, tc := range []struct {
		name    string
		op      string // auto, ip, gateway-auto, gateway, release, release-gateway, attach
		method  string // the failing call
		fails   int
		commit  bool
		err     error
		timeout time.Duration
		wantErr error // nil: success
		calls   int   // of method
		used    int   // addresses used afterwards, once any undo is done
	}{
		{name: "auto, not committed", op: "auto", method: "Claim", fails: 2, calls: 3, used: 1},
		{name: "auto, committed", op: "auto", method: "Claim", fails: 2, commit: true, calls: 3, used: 1},
		{name: "ip, not committed", op: "ip", method: "Claim", fails: 1, calls: 2, used: 1},
		{name: "ip, committed", op: "ip", method: "Claim", fails: 3, commit: true, calls: 4, used: 1},
		{name: "not transient", op: "auto", method: "Claim", fails: 1, commit: true, err: errors.New("etcdserver: mvcc: database space exceeded"), wantErr: errors.ErrUnsupported, calls: 1, used: 0},
		{name: "deadline ends retries", op: "auto", method: "Claim", fails: forever, commit: true, timeout: 400 * time.Millisecond, wantErr: ErrTransient, used: 0},
		// A gateway's record counts its hosts' networks: its op id tells a
		// retry that the failed attempt committed, so the count stays 1.
		{name: "gateway claim, not committed", op: "gateway-auto", method: "Claim", fails: 2, calls: 3, used: 1},
		{name: "gateway claim, committed", op: "gateway-auto", method: "Claim", fails: 2, commit: true, calls: 1, used: 1},
		{name: "gateway hold, not committed", op: "gateway", method: "Swap", fails: 2, calls: 3, used: 1},
		{name: "gateway hold, committed", op: "gateway", method: "Swap", fails: 2, commit: true, calls: 1, used: 1},
		{name: "release, committed", op: "release", method: "Swap", fails: 1, commit: true, calls: 1, used: 0},
		{name: "release, not committed", op: "release", method: "Swap", fails: 2, calls: 3, used: 0},
		{name: "gateway release, not committed", op: "release-gateway", method: "Swap", fails: 2, calls: 3, used: 0},
		{name: "gateway release, committed", op: "release-gateway", method: "Swap", fails: 2, commit: true, calls: 1, used: 0},
		{name: "pool reference, not committed", op: "attach", method: "AddRef", fails: 2, calls: 3},
		{name: "pool reference, committed", op: "attach", method: "AddRef", fails: 2, commit: true, calls: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := mustNetwork(t, "198.18.0.0/24", "")
			s := &flakyStore{memStore: newMemStore(), fails: map[string]int{}, calls: map[string]int{}, commit: tc.commit, err: tc.err, refOps: map[string]bool{}}
			if s.err == nil {
				s.err = errElection
			}
			p := hosts(t, s, n, "h")[0]
			ctx := context.Background()
			if tc.timeout == 0 {
				tc.timeout = 10 * time.Second
			}
			var err error
			var got netip.Addr
			arm := func() {
				s.mu.Lock()
				s.fails[tc.method], s.calls[tc.method] = tc.fails, 0
				s.mu.Unlock()
			}
			switch tc.op {
			case "auto", "ip":
				want := netip.Addr{}
				if tc.op == "ip" {
					want = netip.MustParseAddr("198.18.0.77")
				}
				arm()
				rctx, cancel := context.WithTimeout(ctx, tc.timeout)
				got, err = p.Allocate(rctx, n, want, Allocation{Kind: KindContainer, MAC: mac})
				cancel()
				if err == nil && want.IsValid() && got != want {
					t.Fatalf("got %s, want %s", got, want)
				}
			case "gateway-auto":
				arm()
				_, err = p.Gateway(ctx, n, netip.Addr{}, false)
			case "gateway":
				arm()
				_, err = p.Gateway(ctx, n, gw, false)
			case "release":
				if got, err = p.Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: mac}); err != nil {
					t.Fatal(err)
				}
				arm()
				var released bool
				released, err = p.Release(ctx, n.Subnet, got)
				if err == nil && !released {
					t.Error("released=false for an address the request released")
				}
			case "release-gateway":
				if _, err = p.Gateway(ctx, n, gw, false); err != nil {
					t.Fatal(err)
				}
				arm()
				_, err = p.Release(ctx, n.Subnet, gw)
			case "attach":
				arm()
				err = p.Attach(ctx, n)
				if refs := s.pools[n.Subnet].refs["h"]; err == nil && refs != 2 {
					t.Errorf("host h's reference count is %d after a second Attach, want 2", refs)
				}
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("want success, got %v", err)
			case tc.wantErr == errors.ErrUnsupported && (err == nil || errors.Is(err, ErrTransient)):
				t.Fatalf("want the non-transient error, got %v", err)
			case tc.wantErr != nil && tc.wantErr != errors.ErrUnsupported && !errors.Is(err, tc.wantErr):
				t.Fatalf("want %v, got %v", tc.wantErr, err)
			}
			if calls := s.called(tc.method); tc.calls > 0 && calls != tc.calls {
				t.Errorf("%s called %d times, want %d", tc.method, calls, tc.calls)
			}
			// An undo runs in the background: wait for the count to settle,
			// and long enough for a wrong one to show.
			deadline := time.Now().Add(3 * time.Second)
			for len(s.used(n.Subnet)) != tc.used && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond)
			used := s.used(n.Subnet)
			if len(used) != tc.used {
				t.Fatalf("%d addresses used (%v), want %d (err %v)", len(used), used, tc.used, err)
			}
			if got.IsValid() && tc.used == 1 && tc.op != "release" {
				if u, ok := used[got]; !ok || u.MAC != mac {
					t.Fatalf("used %v; want %s held by %s", used, got, mac)
				}
			}
			for a, u := range used {
				if counted(&u) && u.Holders["h"] != 1 {
					t.Fatalf("%s is held %d times by host h, want once: %+v", a, u.Holders["h"], u)
				}
			}
		})
	}
}
