package etcdstore_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// TestRecoverSpace reproduces a NOSPACE episode: etcd's database full of
// history, its alarm raised. A release is refused as pool.ErrNoSpace and
// changes nothing; Alarms names the alarm; RecoverSpace (compact, defrag,
// disarm) ends it, and the same release then succeeds.
func TestRecoverSpace(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.SmallQuota)
	store := etcdstore.New(srv.Client(t), "/t")
	p := pool.New(store, pool.Config{Host: "h1"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, _ := pool.NewNetwork("10.9.0.0/24", "")
	if err := p.Attach(ctx, n); err != nil {
		t.Fatal(err)
	}
	addr, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:0a:09:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if alarms, err := store.Alarms(ctx); err != nil || len(alarms) != 0 {
		t.Fatalf("alarms before: %v %v, want none", alarms, err)
	}

	srv.Exhaust(t)
	alarms, err := store.Alarms(ctx)
	if err != nil || len(alarms) != 1 || alarms[0].Name != "NOSPACE" {
		t.Fatalf("alarms after filling etcd: %v %v, want one NOSPACE", alarms, err)
	}
	if _, err := p.Release(ctx, n.Subnet, addr); !errors.Is(err, pool.ErrNoSpace) || errors.Is(err, pool.ErrTransient) {
		t.Fatalf("release with etcd full: %v, want pool.ErrNoSpace", err)
	}
	if e, err := store.Entry(ctx, n.Subnet, addr); err != nil || e.Used == nil {
		t.Fatalf("a refused release changed %s: %+v %v", addr, e, err)
	}

	rec, err := store.RecoverSpace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Members) != 1 || rec.Members[0].After >= rec.Members[0].Before || !slices.Equal(rec.Disarmed, alarms) {
		t.Fatalf("recovery: %+v, want one member shrunk and %v disarmed", rec, alarms)
	}
	t.Logf("recovery: compacted at %d, %s: %d -> %d bytes", rec.Revision, rec.Members[0].Endpoint, rec.Members[0].Before, rec.Members[0].After)
	if alarms, err := store.Alarms(ctx); err != nil || len(alarms) != 0 {
		t.Fatalf("alarms after recovery: %v %v, want none", alarms, err)
	}
	if released, err := p.Release(ctx, n.Subnet, addr); err != nil || !released {
		t.Fatalf("release after recovery: %v %v", released, err)
	}
	if _, err := store.RecoverSpace(ctx); err != nil {
		t.Fatalf("a second recovery: %v", err)
	}
}
