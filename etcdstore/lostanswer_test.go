package etcdstore_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// TestLostAnswersCountOnce: every change a Docker request makes commits
// once when etcd commits a transaction and its answer is lost (a
// connection that breaks after the commit, a leader that steps down): the
// retry finds the first attempt's effect instead of applying it again. A
// gRPC interceptor lets real etcd commit, then replaces the answer with
// Unavailable, for the next transaction that writes.
func TestLostAnswersCountOnce(t *testing.T) {
	srv := etcdtest.Start(t)
	var lose atomic.Int32 // transactions whose answer is lost next
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   srv.Endpoints(),
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				err := invoker(ctx, method, req, reply, cc, opts...)
				if txn, ok := req.(*pb.TxnRequest); ok && err == nil && writes(txn) && lose.Add(-1) >= 0 {
					return status.Error(codes.Unavailable, "answer lost (test)")
				}
				return err
			})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s := etcdstore.New(cli, "/test")
	hosts := map[string]*pool.Pools{}
	for _, h := range []string{"h1", "h2"} {
		hosts[h] = pool.New(s, pool.Config{Host: h})
	}
	n := mustNetwork(t, "198.18.0.0/24", "198.18.0.128/25")
	ctx := ctxT(t, time.Minute)
	gw, router := netip.MustParseAddr("198.18.0.10"), netip.MustParseAddr("198.18.0.1")

	lost := func(what string, do func() error) {
		t.Helper()
		lose.Store(1)
		if err := do(); err != nil {
			t.Fatalf("%s with its first answer lost: %v", what, err)
		}
		if lose.Load() > 0 {
			t.Fatalf("%s: no transaction was sent", what)
		}
	}
	holders := func(what string, a netip.Addr, want map[string]int) {
		t.Helper()
		e, err := s.Entry(ctx, n.Subnet, a)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]int
		if e.Used != nil {
			got = e.Used.Holders
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %s held by %v, want %v", what, a, got, want)
		}
		for h, c := range want {
			if got[h] != c {
				t.Fatalf("%s: %s held by %v, want %v", what, a, got, want)
			}
		}
	}
	refs := func(what string, want map[string]int) {
		t.Helper()
		got, err := s.Refs(ctx, n.Subnet)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: references %v, want %v", what, got, want)
		}
		for h, c := range want {
			if got[h] != c {
				t.Fatalf("%s: references %v, want %v", what, got, want)
			}
		}
	}

	// docker network create on two hosts: the pool reference, the
	// gateway, the router as aux address.
	for _, h := range []string{"h1", "h2"} {
		p := hosts[h]
		lost(h+": pool reference", func() error { return p.Attach(ctx, n) })
		lost(h+": router", func() error { return p.Aux(ctx, n, router) })
	}
	lost("h1: gateway", func() error { _, err := hosts["h1"].Gateway(ctx, n, gw, false); return err })
	refs("after network create", map[string]int{"h1": 1, "h2": 1})
	holders("after network create", router, map[string]int{"h1": 1, "h2": 1})
	holders("after network create", gw, map[string]int{"h1": 1})

	// A gateway allocated from the range, by h2.
	var gw2 netip.Addr
	lost("h2: gateway from the range", func() (err error) { gw2, err = hosts["h2"].Gateway(ctx, n, netip.Addr{}, false); return err })
	holders("after the allocated gateway", gw2, map[string]int{"h2": 1})

	// docker run and rm.
	var c netip.Addr
	lost("h1: container", func() (err error) {
		c, err = hosts["h1"].Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:80"})
		return err
	})
	lost("h1: container release", func() error { _, err := hosts["h1"].Release(ctx, n.Subnet, c); return err })
	if e, err := s.Entry(ctx, n.Subnet, c); err != nil || e.Used != nil || !e.Free {
		t.Fatalf("after the container's release: %+v, %v; want %s free", e, err, c)
	}

	// docker network rm on h1: its holds and its reference go, h2's stay.
	lost("h1: router release", func() error { _, err := hosts["h1"].Release(ctx, n.Subnet, router); return err })
	lost("h1: gateway release", func() error { _, err := hosts["h1"].Release(ctx, n.Subnet, gw); return err })
	lost("h1: pool reference release", func() error { return hosts["h1"].Detach(ctx, n.Subnet) })
	holders("after h1's network rm", router, map[string]int{"h2": 1})
	holders("after h1's network rm", gw, nil)
	refs("after h1's network rm", map[string]int{"h2": 1})
}

// writes says whether t may change a key: reads travel as transactions too.
func writes(t *pb.TxnRequest) bool {
	for _, op := range t.Success {
		switch {
		case op.GetRequestPut() != nil, op.GetRequestDeleteRange() != nil:
			return true
		case op.GetRequestTxn() != nil && writes(op.GetRequestTxn()):
			return true
		}
	}
	return false
}
