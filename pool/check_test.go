package pool

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// snapshotOf reads a memStore pool the way etcdstore.Snapshot reads etcd.
func snapshotOf(t *testing.T, s *memStore, subnet netip.Prefix) Snapshot {
	t.Helper()
	p := s.pools[subnet]
	snap := Snapshot{Meta: p.meta, Used: map[netip.Addr][]byte{}, Refs: p.refs, Owners: p.owners, Bindings: p.bound}
	for a := range p.free {
		snap.Free = append(snap.Free, a)
	}
	for a, u := range p.used {
		raw, err := json.Marshal(u.a)
		if err != nil {
			t.Fatal(err)
		}
		snap.Used[a] = raw
	}
	return snap
}

func TestCheck(t *testing.T) {
	ctx := context.Background()
	s := newMemStore()
	n := mustNetwork(t, "198.18.0.0/28", "")
	ps := hosts(t, s, n, "a", "b")
	c1, err := ps[0].Allocate(ctx, n, netip.MustParseAddr("198.18.0.5"), Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps[0].Gateway(ctx, n, netip.MustParseAddr("198.18.0.1"), true); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := p.Aux(ctx, n, netip.MustParseAddr("198.18.0.14")); err != nil {
			t.Fatal(err)
		}
	}
	// A sticky name: one held, one idle.
	web, err := ps[1].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:02", Sticky: "web"})
	if err != nil {
		t.Fatal(err)
	}
	db, err := ps[1].Allocate(ctx, n, netip.Addr{}, Allocation{Kind: KindContainer, MAC: "02:42:00:00:00:03", Sticky: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps[1].Release(ctx, n.Subnet, db); err != nil {
		t.Fatal(err)
	}
	if got := Check(snapshotOf(t, s, n.Subnet)); len(got) != 0 {
		t.Fatalf("healthy pool: %+v", got)
	}

	for _, tc := range []struct {
		name    string
		corrupt func(*Snapshot)
		addr    string
		problem string
	}{
		{"both", func(sn *Snapshot) { sn.Free = append(sn.Free, c1) }, c1.String(), "both free and used"},
		{"lost", func(sn *Snapshot) { sn.Free = sn.Free[1:] }, "", "lost"},
		{"outside", func(sn *Snapshot) { sn.Meta.Ranges, _ = ParseRanges("198.18.0.1") }, "", "free but outside the seeded ranges"},
		{"malformed", func(sn *Snapshot) { sn.Used[c1] = []byte("{") }, c1.String(), "malformed used record"},
		{"kind", func(sn *Snapshot) { sn.Used[c1] = []byte(`{"kind":"nonsense"}`) }, c1.String(), `unknown kind "nonsense"`},
		{"leaked ref", func(sn *Snapshot) { sn.Refs = map[string]int{"a": 1} }, "198.18.0.14", `host "b" references it 1 times but has 0 networks`},
		{"owner", func(sn *Snapshot) { sn.Owners = map[string]netip.Addr{} }, c1.String(), "without its owner index"},
		{"nameless reservation", func(sn *Snapshot) { sn.Used[c1] = []byte(`{"kind":"reserved","host":"a"}`) }, c1.String(), "idle reservation"},
		{"reserved gateway", func(sn *Snapshot) {
			sn.Used[c1] = []byte(`{"kind":"gateway","host":"a","holders":{"a":1},"reservation":"x"}`)
		}, c1.String(), "only containers hold reservations"},
		{"anycast twice", func(sn *Snapshot) {
			sn.Used[c1] = []byte(`{"kind":"anycast","holders":{"a":2},"macs":{"a":"m"}}`)
		}, c1.String(), "each host may hold it once"},
		{"anycast endpoint", func(sn *Snapshot) { sn.Used[c1] = []byte(`{"kind":"anycast","macs":{"b":"m"}}`) }, c1.String(), "does not hold it"},
		{"binding elsewhere", func(sn *Snapshot) { sn.Bindings = map[string]netip.Addr{"web": db, "db": db} }, web.String(), `bound to name "web", but the name's binding points elsewhere`},
		{"binding to another record", func(sn *Snapshot) { sn.Bindings = map[string]netip.Addr{"web": web, "db": web} }, web.String(), `name "db" is bound here`},
		{"bad key", func(sn *Snapshot) { sn.BadKeys = []string{"/x/free/198.18.0.0-28/zz"} }, "/x/free/198.18.0.0-28/zz", "does not name an address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn := snapshotOf(t, s, n.Subnet)
			sn.Refs = map[string]int{"a": 1, "b": 1}
			tc.corrupt(&sn)
			got := Check(sn)
			for _, a := range got {
				if strings.Contains(a.Problem, tc.problem) && (tc.addr == "" || a.Address == tc.addr) && a.Fix != "" {
					return
				}
			}
			t.Fatalf("want an anomaly %q at %q, got %+v", tc.problem, tc.addr, got)
		})
	}
}
