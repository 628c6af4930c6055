package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/pool"
)

func TestReserve(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	n, _ := pool.NewNetwork("198.18.1.0/24", "")
	vip := netip.MustParseAddr("198.18.1.50")

	got := okJSON[[]markJSON](c, "reserve", "198.18.1.0/24", "198.18.1.50", "--name", "web")
	if len(got) != 1 || got[0].State != "idle" || got[0].Reservation != "web" || got[0].Kind != "reserved" {
		t.Fatalf("reserve: %+v", got)
	}
	c.ok("reserve", "--name", "web", "198.18.1.0/24", "198.18.1.50") // again: a no-op
	c.fails("missing --name", "reserve", "198.18.1.0/24", "198.18.1.51")
	c.fails(`already reserved as "web"`, "reserve", "198.18.1.0/24", "198.18.1.50", "--name", "db")
	c.fails(`in use: gateway of host "hostA"`, "reserve", "198.18.1.0/24", "198.18.1.100", "--name", "db")
	c.fails("does not exist", "reserve", "198.18.9.0/24", "198.18.9.1", "--name", "db")

	hostA, _ := c.pools("hostA")
	if _, err := hostA.Allocate(ctx(t), n, vip, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:01:32"}); err != nil {
		t.Fatal(err)
	}
	ls := okJSON[[]markJSON](c, "reserve", "ls")
	if len(ls) != 1 || ls[0].State != "held" || ls[0].Host != "hostA" || ls[0].Reservation != "web" || ls[0].Subnet != "198.18.1.0/24" {
		t.Fatalf("reserve ls: %+v", ls)
	}
	if out := c.ok("reserve", "ls", "--subnet", "198.18.1.0/24"); !strings.Contains(out, "hostA=02:42:c6:12:01:32") || !strings.Contains(out, "held") {
		t.Errorf("reserve ls table:\n%s", out)
	}
	if a := okJSON[[]addrJSON](c, "addr", "ls", "--kind", "container", "--host", "hostA", "198.18.1.0/24"); len(a) != 3 || a[2].Reservation != "web" {
		t.Errorf("addr ls: %+v; want the reservation named", a)
	}
	if out := c.ok("addr", "ls", "198.18.1.0/24"); !strings.Contains(out, "RESERVATION") || !strings.Contains(out, " web ") {
		t.Errorf("addr ls table:\n%s", out)
	}

	// The operator's release returns it to the reservation; ending that
	// frees it.
	if out := c.ok("release", "198.18.1.0/24", "198.18.1.50"); !strings.Contains(out, "released") {
		t.Errorf("release:\n%s", out)
	}
	if ls := okJSON[[]markJSON](c, "reserve", "ls"); len(ls) != 1 || ls[0].State != "idle" {
		t.Fatalf("after release: %+v; want idle", ls)
	}
	c.fails("1 of 1 addresses not released", "release", "198.18.1.0/24", "198.18.1.50")
	if out, _, _ := c.run("release", "198.18.1.0/24", "198.18.1.50"); !strings.Contains(out, "ipamctl reserve rm 198.18.1.0/24 198.18.1.50") {
		t.Errorf("release of an idle reservation does not say how to end it:\n%s", out)
	}
	if got := okJSON[[]markJSON](c, "reserve", "rm", "198.18.1.0/24", "198.18.1.50"); got[0].State != "free" {
		t.Fatalf("reserve rm: %+v", got)
	}
	c.fails("is not reserved", "reserve", "rm", "198.18.1.0/24", "198.18.1.50")

	// Reserving a container's address keeps it with the container.
	if got := okJSON[[]markJSON](c, "reserve", "198.18.1.0/24", "198.18.1.12", "--name", "db"); got[0].State != "held" || got[0].Host != "hostB" {
		t.Fatalf("reserving hostB's container address: %+v", got)
	}
	c.ok("check")
}

func TestAnycast(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	n, _ := pool.NewNetwork("198.18.1.0/24", "")
	acast := netip.MustParseAddr("198.18.1.60")
	if got := okJSON[[]markJSON](c, "anycast", "add", "198.18.1.0/24", "198.18.1.60"); got[0].State != "idle" || got[0].Kind != "anycast" {
		t.Fatalf("anycast add: %+v", got)
	}
	for i, h := range []string{"hostA", "hostB"} {
		p, _ := c.pools(h)
		if _, err := p.Allocate(ctx(t), n, acast, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:01:3" + string(rune('c'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	ls := okJSON[[]markJSON](c, "anycast", "ls")
	if len(ls) != 1 || ls[0].State != "held" || len(ls[0].Holders) != 2 || ls[0].MACs["hostB"] != "02:42:c6:12:01:3d" {
		t.Fatalf("anycast ls: %+v", ls)
	}
	if out := c.ok("addr", "ls", "--kind", "anycast", "198.18.1.0/24"); !strings.Contains(out, "hostA=02:42:c6:12:01:3c,hostB=02:42:c6:12:01:3d") {
		t.Errorf("addr ls does not show every holder:\n%s", out)
	}
	show := okJSON[poolShowJSON](c, "pool", "show", "198.18.1.0/24")
	if show.UsedByKind["anycast"] != 1 || len(show.Marked) != 1 || show.UsedByHost["hostB"] != 3 {
		t.Errorf("pool show: %+v", show)
	}
	if out := c.ok("pool", "show", "198.18.1.0/24"); !strings.Contains(out, "RESERVED/ANYCAST") {
		t.Errorf("pool show table:\n%s", out)
	}
	c.fails("held by containers on hosts hostA,hostB; stop them first, or use --force", "anycast", "rm", "198.18.1.0/24", "198.18.1.60")
	if got := okJSON[[]markJSON](c, "anycast", "rm", "198.18.1.0/24", "198.18.1.60", "--host", "hostA"); got[0].State != "held" || len(got[0].Holders) != 1 {
		t.Fatalf("anycast rm --host hostA: %+v", got)
	}
	c.fails(`host "hostA" holds no 198.18.1.60`, "anycast", "rm", "198.18.1.0/24", "198.18.1.60", "--host", "hostA")
	c.ok("check")
	if got := okJSON[[]markJSON](c, "anycast", "rm", "198.18.1.0/24", "198.18.1.60", "--force"); got[0].State != "free" {
		t.Fatalf("anycast rm --force: %+v", got)
	}
	c.fails("is not an anycast address", "anycast", "rm", "198.18.1.0/24", "198.18.1.60")
	c.fails("in use: container", "anycast", "add", "198.18.1.0/24", "198.18.1.10")
}
