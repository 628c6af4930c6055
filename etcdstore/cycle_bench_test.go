package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

// BenchmarkCycle is what a container's life costs the store: allocate an
// address (with a MAC, so the owner index is written) and release it, from
// 64 goroutines, with no reuse delay. BenchmarkBaselineCycle does the same
// durable work with two bare transactions per address.
func BenchmarkCycle(b *testing.B) {
	_, s, _, n := seededPool(b)
	p := pool.New(s, pool.Config{Host: "bench"})
	var macs atomic.Uint64
	b.SetParallelism(32) // × GOMAXPROCS(2) = 64 goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := macs.Add(1)
		ctx := context.Background()
		for pb.Next() {
			a := pool.Allocation{Kind: pool.KindContainer, MAC: fmt.Sprintf("02:42:00:00:%02x:%02x", id>>8, id&0xff)}
			addr, err := p.Allocate(ctx, n, netip.Addr{}, a)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := p.Release(ctx, n.Subnet, addr); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkBaselineCycle(b *testing.B) {
	srv, _, _, _ := seededPool(b)
	cli := srv.Client(b)
	k := keys{prefix: "/bench/"}
	subnet := netip.MustParsePrefix(benchSubnet)
	var workers atomic.Uint64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		a := pool.AddrAt(pool.HostRange(subnet), workers.Add(1))
		free, used := k.free(subnet, a), k.used(subnet, a)
		ctx := context.Background()
		for pb.Next() {
			r, err := cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(free), ">", 0), clientv3.Compare(clientv3.CreateRevision(used), "=", 0)).
				Then(clientv3.OpDelete(free), clientv3.OpPut(used, `{"kind":"container","host":"bench","mac":"02:42:00:00:00:01","since":"2026-11-22T00:00:00Z"}`)).Commit()
			if err == nil && r.Succeeded {
				r, err = cli.Txn(ctx).
					If(clientv3.Compare(clientv3.CreateRevision(used), ">", 0)).
					Then(clientv3.OpDelete(used), clientv3.OpPut(free, "")).Commit()
			}
			if err != nil || !r.Succeeded {
				b.Errorf("baseline cycle of %s: %v", a, err)
				return
			}
		}
	})
}
