package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/pool"
)

func TestHostAddresses(t *testing.T) {
	c := newCtl(t)
	c.ok("init-range", "--subnet", "198.18.0.0/24", "--range", "198.18.0.1-198.18.0.100")
	rec := okJSON[[]hostAddrJSON](c, "host-range", "--subnet", "198.18.0.0/24", "--range", "198.18.0.11-198.18.0.13")
	if len(rec) != 3 || rec[0].Result != "recorded" {
		t.Fatalf("host-range: %+v", rec)
	}
	if again := okJSON[[]hostAddrJSON](c, "host-range", "--subnet", "198.18.0.0/24", "--range", "198.18.0.11"); again[0].Result != "already recorded" {
		t.Fatalf("host-range again: %+v", again)
	}
	c.fails("does not exist", "host-range", "--subnet", "198.19.0.0/24", "--range", "198.19.0.1")

	// Host h1's dockerd makes .11 its gateway: that claims it.
	p, _ := c.pools("h1")
	n, _ := pool.NewNetwork("198.18.0.0/24", "")
	if _, err := p.Gateway(context.Background(), n, netip.MustParseAddr("198.18.0.11"), true); err != nil {
		t.Fatal(err)
	}
	hosts := okJSON[[]hostAddrJSON](c, "host", "ls")
	if len(hosts) != 3 || hosts[0].Host != "h1" || hosts[0].Gateway["h1"] != 1 || hosts[1].Host != "" {
		t.Fatalf("host ls: %+v", hosts)
	}
	c.fails("--force", "host", "release", "198.18.0.0/24", "198.18.0.11")
	c.fails("not recorded as a host address", "host", "release", "198.18.0.0/24", "198.18.0.50") // a free address
	c.ok("host", "release", "198.18.0.0/24", "198.18.0.12")
	if hosts := okJSON[[]hostAddrJSON](c, "host", "ls", "--subnet", "198.18.0.0/24"); len(hosts) != 2 {
		t.Fatalf("after release: %+v", hosts)
	}
	c.fails("pool 198.19.9.0/24 does not exist", "host", "release", "198.19.9.0/24", "198.19.9.9")
}

func TestCheckFindsCorruption(t *testing.T) {
	c := newCtl(t)
	c.ok("init-range", "--subnet", "198.18.0.0/24", "--range", "198.18.0.1-198.18.0.20")
	p, _ := c.pools("h1")
	n, _ := pool.NewNetwork("198.18.0.0/24", "")
	a, err := p.Allocate(context.Background(), n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	if got := okJSON[[]checkJSON](c, "check"); len(got) != 1 || len(got[0].Anomalies) != 0 {
		t.Fatalf("check of a healthy pool: %+v", got)
	}
	// Break it behind the plugin's back: the used address also free, and
	// another address gone from both sets.
	cli := c.etcd.Client(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, testPrefix+"/free/198.18.0.0-24/"+zeroPadded(a), ""); err != nil {
		t.Fatal(err)
	}
	lost := netip.MustParseAddr("198.18.0.20")
	if a == lost {
		lost = netip.MustParseAddr("198.18.0.19")
	}
	if _, err := cli.Delete(ctx, testPrefix+"/free/198.18.0.0-24/"+zeroPadded(lost)); err != nil {
		t.Fatal(err)
	}
	out := c.fails("2 anomalies in 1 pools", "check", "198.18.0.0/24")
	for _, want := range []string{a.String(), "both free and used", lost.String(), "lost: seeded, but neither free nor used", "ipamctl init-range --subnet 198.18.0.0/24 --range " + lost.String()} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
}

func zeroPadded(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%03d.%03d.%03d.%03d", b[0], b[1], b[2], b[3])
}
