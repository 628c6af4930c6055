package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

func seedRange(t *testing.T, s string) netipx.IPRange {
	t.Helper()
	r, err := pool.ParseRange(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func seedSetOf(t *testing.T, s string) *netipx.IPSet {
	t.Helper()
	var b netipx.IPSetBuilder
	b.AddRange(seedRange(t, s))
	set, _ := b.IPSet()
	return set
}

func TestGaps(t *testing.T) {
	a := netip.MustParseAddr
	r := seedRange(t, "10.0.0.10-10.0.0.20")
	for _, tc := range []struct {
		name    string
		present []netip.Addr
		want    string
	}{
		{"none present", nil, "10.0.0.10-10.0.0.20"},
		{"all present", func() (p []netip.Addr) {
			for x := r.From(); r.Contains(x); x = x.Next() {
				p = append(p, x)
			}
			return p
		}(), ""},
		{"ends present", []netip.Addr{a("10.0.0.20"), a("10.0.0.10")}, "10.0.0.11-10.0.0.19"},
		{"free and used both, unsorted", []netip.Addr{a("10.0.0.15"), a("10.0.0.12"), a("10.0.0.15")}, "10.0.0.10-10.0.0.11,10.0.0.13-10.0.0.14,10.0.0.16-10.0.0.20"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b netipx.IPSetBuilder
			for _, g := range gaps(r, tc.present) {
				b.AddRange(g)
			}
			got, _ := b.IPSet()
			if s := pool.FormatRanges(got); s != tc.want {
				t.Fatalf("gaps = %q, want %q", s, tc.want)
			}
		})
	}
}

func TestPackRunsStaysWithinTxnLimits(t *testing.T) {
	var alternate []netipx.IPRange // 200 single addresses: 200 runs
	for i := range 200 {
		x := netip.AddrFrom4([4]byte{10, 0, byte(i / 128), byte(2 * (i % 128))})
		alternate = append(alternate, netipx.IPRangeFrom(x, x))
	}
	for _, tc := range []struct {
		name    string
		runs    []netipx.IPRange
		batches int
	}{
		{"one long run", []netipx.IPRange{seedRange(t, "10.0.0.0-10.0.1.43")}, 3}, // 300 = 128+128+44
		{"single addresses", alternate, 4},                                        // 63+63+63+11 runs
		{"mixed", []netipx.IPRange{seedRange(t, "10.0.0.1-10.0.0.100"), seedRange(t, "10.0.1.1-10.0.1.100")}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in, out netipx.IPSetBuilder
			for _, r := range tc.runs {
				in.AddRange(r)
			}
			batches := packRuns(tc.runs)
			for _, b := range batches {
				if n := runsSize(b); n == 0 || n > seedBatch || len(b) > seedRuns || 2*len(b)+1 > 128 {
					t.Fatalf("batch of %d addresses in %d runs", n, len(b))
				}
				for _, r := range b {
					out.AddRange(r)
				}
			}
			want, _ := in.IPSet()
			got, _ := out.IPSet()
			if !got.Equal(want) || runsSize(tc.runs) != pool.SetSize(got) || len(batches) != tc.batches {
				t.Fatalf("%d batches holding %s, want %d holding %s", len(batches), pool.FormatRanges(got), tc.batches, pool.FormatRanges(want))
			}
		})
	}
}

// seedFixture is a store with one pool's meta in a fresh etcd.
func seedFixture(t *testing.T, subnet string) (*etcdtest.Server, *Store, netip.Prefix) {
	t.Helper()
	srv := etcdtest.Start(t)
	s := New(srv.Client(t), "/test")
	p := netip.MustParsePrefix(subnet)
	if _, ok, err := s.CreateMeta(context.Background(), pool.Meta{Subnet: p, Ranges: &netipx.IPSet{}, Created: time.Now()}); err != nil || !ok {
		t.Fatalf("creating the pool: %v %v", ok, err)
	}
	return srv, s, p
}

// seedState lists the pool's free and used keys, with the used ones' values.
func seedState(t *testing.T, ctx context.Context, s *Store, subnet netip.Prefix) (free map[netip.Addr]bool, used map[netip.Addr]string) {
	t.Helper()
	free, used = map[netip.Addr]bool{}, map[netip.Addr]string{}
	for dir, f := range map[string]func(netip.Addr, string){
		s.k.freeDir(subnet): func(a netip.Addr, _ string) { free[a] = true },
		s.k.usedDir(subnet): func(a netip.Addr, v string) { used[a] = v },
	} {
		r, err := s.cli.Get(ctx, dir, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range r.Kvs {
			a, err := parseAddrKey(string(kv.Key))
			if err != nil {
				t.Fatal(err)
			}
			f(a, string(kv.Value))
		}
	}
	return free, used
}

// checkSeeded: every address of set is free or used, never both, used
// values are as written, and nothing outside set is free.
func checkSeeded(t *testing.T, ctx context.Context, s *Store, subnet netip.Prefix, set *netipx.IPSet, usedWant map[netip.Addr]string) {
	t.Helper()
	free, used := seedState(t, ctx, s, subnet)
	for a := range free {
		if !set.Contains(a) {
			t.Errorf("%s is free but not in the set", a)
		}
		if _, ok := used[a]; ok {
			t.Errorf("%s is free and used", a)
		}
	}
	for a, v := range usedWant {
		if used[a] != v {
			t.Errorf("used %s = %q, want %q", a, used[a], v)
		}
	}
	if n := uint64(len(free) + len(used)); n != pool.SetSize(set) {
		t.Errorf("%d free + %d used, want %d", len(free), len(used), pool.SetSize(set))
	}
}

// TestSeedAroundScatteredKeys: every other address already free or used
// splits the missing ones into single-address runs, more than one
// transaction holds; etcd (--max-txn-ops 128) refuses any that is too big.
func TestSeedAroundScatteredKeys(t *testing.T) {
	_, s, subnet := seedFixture(t, "10.0.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set := seedSetOf(t, "10.0.0.1-10.0.19.255")
	used := map[netip.Addr]string{}
	for i := uint64(0); i < 5000; i += 2 {
		a := pool.AddrAt(seedRange(t, "10.0.0.1-10.0.19.255"), i)
		key, val := s.k.free(subnet, a), ""
		if i%4 == 0 {
			key, val = s.k.used(subnet, a), fmt.Sprintf(`{"kind":"container","host":"h%d"}`, i)
			used[a] = val
		}
		if _, err := s.cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	var last uint64
	added, err := s.Seed(ctx, subnet, set, func(done, total uint64) { last = done })
	if err != nil || added != pool.SetSize(set)-2500 || last != pool.SetSize(set) {
		t.Fatalf("seeded %d (want %d), progress ended at %d: %v", added, pool.SetSize(set)-2500, last, err)
	}
	checkSeeded(t, ctx, s, subnet, set, used)
}

// TestSeedBatchShrinksToMissing drives a write whose compares fail (the
// keys appeared after the chunk was read): the retry writes only the
// missing addresses, in as many transactions as their runs need.
func TestSeedBatchShrinksToMissing(t *testing.T) {
	_, s, subnet := seedFixture(t, "10.0.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := seedRange(t, "10.0.0.0-10.0.0.127")
	used := map[netip.Addr]string{}
	for i := uint64(1); i < 128; i += 2 { // 64 present, leaving 64 single-address runs
		a := pool.AddrAt(run, i)
		used[a] = `{"kind":"gateway","host":"h"}`
		if _, err := s.cli.Put(ctx, s.k.used(subnet, a), used[a]); err != nil {
			t.Fatal(err)
		}
	}
	added, err := s.seedBatch(ctx, subnet, []netipx.IPRange{run}, 0)
	if err != nil || added != 64 {
		t.Fatalf("seeded %d, want 64: %v", added, err)
	}
	checkSeeded(t, ctx, s, subnet, seedSetOf(t, "10.0.0.0-10.0.0.127"), used)
}

// TestReseedIsReadOnly: re-seeding a seeded pool adds nothing and costs
// etcd no consensus write (its raft index does not move), yet still
// notices a pool that is gone.
func TestReseedIsReadOnly(t *testing.T) {
	_, s, subnet := seedFixture(t, "10.0.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set := seedSetOf(t, "10.0.0.1-10.0.39.255")
	if added, err := s.Seed(ctx, subnet, set, nil); err != nil || added != pool.SetSize(set) {
		t.Fatalf("first seeding: %d, %v", added, err)
	}
	status := func() uint64 {
		st, err := s.cli.Status(ctx, s.cli.Endpoints()[0])
		if err != nil {
			t.Fatal(err)
		}
		return st.RaftIndex
	}
	before := status()
	if added, err := s.Seed(ctx, subnet, set, nil); err != nil || added != 0 {
		t.Fatalf("re-seeding: %d, %v", added, err)
	}
	if after := status(); after != before {
		t.Errorf("re-seeding moved etcd's raft index from %d to %d: it wrote", before, after)
	}
	if err := s.DeletePool(ctx, subnet, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Seed(ctx, subnet, set, nil); !errors.Is(err, pool.ErrUnknownPool) {
		t.Fatalf("re-seeding a removed pool: %v, want ErrUnknownPool", err)
	}
	if r, err := s.cli.Get(ctx, "/test/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 0 {
		t.Fatalf("%d keys after seeding a removed pool (%v)", r.Count, err)
	}
}

// TestSeedConcurrentWithItselfAndClaims: two seedings of one set and a
// stream of claims (free → used, the claim's own compares) at once end
// with every address free or used exactly once and every claim intact.
func TestSeedConcurrentWithItselfAndClaims(t *testing.T) {
	_, s, subnet := seedFixture(t, "10.0.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	whole := seedRange(t, "10.0.0.1-10.0.78.255")
	set := seedSetOf(t, "10.0.0.1-10.0.78.255")
	var (
		wg    sync.WaitGroup
		added [2]uint64
		errs  [2]error
		mu    sync.Mutex
		used  = map[netip.Addr]string{}
		stop  = make(chan struct{})
	)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			added[i], errs[i] = s.Seed(ctx, subnet, set, nil)
		}()
	}
	claimed := make(chan struct{})
	go func() { // claims at addresses spread over the set, while seeding runs
		defer close(claimed)
		for i := uint64(0); ; i = (i + 7919) % pool.RangeSize(whole) {
			select {
			case <-stop:
				return
			default:
			}
			a := pool.AddrAt(whole, i)
			v := fmt.Sprintf(`{"kind":"container","host":"c%d"}`, i)
			r, err := s.cli.Txn(ctx).If(
				clientv3.Compare(clientv3.CreateRevision(s.k.free(subnet, a)), ">", 0),
				clientv3.Compare(clientv3.CreateRevision(s.k.used(subnet, a)), "=", 0),
			).Then(clientv3.OpDelete(s.k.free(subnet, a)), clientv3.OpPut(s.k.used(subnet, a), v)).Commit()
			if err != nil {
				t.Error(err)
				return
			}
			if r.Succeeded {
				mu.Lock()
				used[a] = v
				mu.Unlock()
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-claimed
	for i, err := range errs {
		if err != nil {
			t.Fatalf("seeding %d: %v", i, err)
		}
	}
	if len(used) == 0 {
		t.Fatal("no claim landed while seeding: the test proved nothing")
	}
	if added[0]+added[1] != pool.SetSize(set) {
		t.Errorf("the seedings added %d and %d, together %d, want %d", added[0], added[1], added[0]+added[1], pool.SetSize(set))
	}
	checkSeeded(t, ctx, s, subnet, set, used)
}
