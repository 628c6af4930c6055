package etcdstore

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// The benchmarks pair each of our operations with its baseline: the raw
// etcd transaction doing the same durable compare-and-swap per address
// (delete free/<a>, create used/<a>), with no plugin logic. Compare ns/op
// of the pairs from one run (docs/PERFORMANCE.md).

const benchSubnet = "198.18.0.0/16"

// seededPool starts etcd and seeds a /16; it returns the store and pools.
func seededPool(b *testing.B) (*etcdtest.Server, *Store, *pool.Pools, pool.Network) {
	b.Helper()
	if b.N > 60000 {
		b.Fatalf("b.N=%d exceeds the /16 pool; use -benchtime=Nx with N <= 60000", b.N)
	}
	srv := etcdtest.Start(b)
	s := New(srv.Client(b), "/bench")
	p := pool.New(s, pool.Config{Host: "bench"})
	n, _ := pool.NewNetwork(benchSubnet, "")
	if err := p.Attach(context.Background(), n); err != nil {
		b.Fatal(err)
	}
	return srv, s, p, n
}

func BenchmarkAllocate(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		_, _, p, n := seededPool(b)
		b.ResetTimer()
		for range b.N {
			if _, err := p.Allocate(context.Background(), n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel32", func(b *testing.B) {
		_, _, p, n := seededPool(b)
		b.SetParallelism(16) // 16 × GOMAXPROCS(2) = 32 goroutines
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := p.Allocate(context.Background(), n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkBaselineTxn claims the pool's addresses in order with the bare
// transaction, no random pick, no record encoding, no retries.
func BenchmarkBaselineTxn(b *testing.B) {
	k := keys{prefix: "/bench/"}
	subnet := netip.MustParsePrefix(benchSubnet)
	claim := func(b *testing.B, cli *clientv3.Client, i uint64) {
		a := pool.AddrAt(pool.HostRange(subnet), i)
		free, used := k.free(subnet, a), k.used(subnet, a)
		r, err := cli.Txn(context.Background()).
			If(clientv3.Compare(clientv3.CreateRevision(free), ">", 0),
				clientv3.Compare(clientv3.CreateRevision(used), "=", 0)).
			Then(clientv3.OpDelete(free), clientv3.OpPut(used, `{"kind":"container","host":"bench"}`)).
			Commit()
		if err != nil || !r.Succeeded {
			b.Fatalf("baseline claim of %s: %v %v", a, r, err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		srv, _, _, _ := seededPool(b)
		cli := srv.Client(b)
		b.ResetTimer()
		for i := range b.N {
			claim(b, cli, uint64(i))
		}
	})
	b.Run("parallel32", func(b *testing.B) {
		srv, _, _, _ := seededPool(b)
		cli := srv.Client(b)
		var next atomic.Uint64
		b.SetParallelism(16)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				claim(b, cli, next.Add(1)-1)
			}
		})
	})
}

// BenchmarkSeed16 seeds a whole /16 (65,534 addresses) per iteration.
func BenchmarkSeed16(b *testing.B) {
	srv := etcdtest.Start(b)
	s := New(srv.Client(b), "/bench")
	p := pool.New(s, pool.Config{Host: "bench"})
	subnet := netip.MustParsePrefix(benchSubnet)
	var sb netipx.IPSetBuilder
	sb.AddRange(pool.HostRange(subnet))
	set, _ := sb.IPSet()
	for range b.N {
		b.StopTimer()
		if err := s.DeletePool(context.Background(), subnet, true); err != nil && !errors.Is(err, pool.ErrUnknownPool) {
			b.Fatal(err)
		}
		b.StartTimer()
		if added, err := p.AddRanges(context.Background(), subnet, set, nil); err != nil || added != 65534 {
			b.Fatalf("seeded %d: %v", added, err)
		}
	}
}

// BenchmarkReseed16 re-runs the seeding of a seeded /16 (`init-range`
// run twice): nothing is missing, so it should cost reads only.
func BenchmarkReseed16(b *testing.B) {
	srv := etcdtest.Start(b)
	s := New(srv.Client(b), "/bench")
	p := pool.New(s, pool.Config{Host: "bench"})
	subnet := netip.MustParsePrefix(benchSubnet)
	var sb netipx.IPSetBuilder
	sb.AddRange(pool.HostRange(subnet))
	set, _ := sb.IPSet()
	if added, err := p.AddRanges(context.Background(), subnet, set, nil); err != nil || added != 65534 {
		b.Fatalf("seeded %d: %v", added, err)
	}
	b.ResetTimer()
	for range b.N {
		if added, err := p.AddRanges(context.Background(), subnet, set, nil); err != nil || added != 0 {
			b.Fatalf("re-seeded %d: %v", added, err)
		}
	}
}

// BenchmarkBaselineSeed16 puts the same 65,534 free keys with bare
// transactions of 128 puts, 8 in flight, with no compares and no read-back.
func BenchmarkBaselineSeed16(b *testing.B) {
	srv := etcdtest.Start(b)
	cli := srv.Client(b)
	k := keys{prefix: "/bench/"}
	subnet := netip.MustParsePrefix(benchSubnet)
	r := pool.HostRange(subnet)
	size := pool.RangeSize(r)
	for range b.N {
		b.StopTimer()
		if _, err := cli.Delete(context.Background(), k.freeDir(subnet), clientv3.WithPrefix()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var next atomic.Uint64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for start := next.Add(128) - 128; start < size; start = next.Add(128) - 128 {
					ops := make([]clientv3.Op, 0, 128)
					for i := start; i < min(start+128, size); i++ {
						ops = append(ops, clientv3.OpPut(k.free(subnet, pool.AddrAt(r, i)), ""))
					}
					if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
}
