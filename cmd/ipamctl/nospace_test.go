package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/releasequeue"
)

// TestNoSpaceEpisode replays an operator's NOSPACE episode on a real etcd
// with a 4 MiB quota, then its recovery as docs/OPERATIONS.md gives it
// ("etcd out of space (NOSPACE)"): with etcd's database full of history, a
// host's daemon answers 150 container releases and its network's gateway
// and router releases with success and keeps them; check and status name
// the alarm and fail; `ipamctl etcd recover-space` ends it; the daemon
// applies what it kept; every released address is free again and check is
// clean.
func TestNoSpaceEpisode(t *testing.T) {
	c := &ctl{t: t, etcd: etcdtest.Start(t, etcdtest.SmallQuota)}
	store := etcdstore.New(c.etcd.Client(t), testPrefix)
	pools := pool.New(store, pool.Config{Host: "h1", ReuseDelay: pool.DefaultReuseDelay})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pending, err := releasequeue.Open(t.TempDir(), pools, 5*time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	d := &ipam.Driver{Pools: pools, Timeout: 5 * time.Second, StoreName: "etcd " + c.etcd.Endpoints()[0], Log: log, Pending: pending}
	run, stop := context.WithCancel(context.Background())
	defer stop()
	go pending.Run(run)

	const id = "198.18.0.0/24"
	if _, err := d.RequestPool(&api.RequestPoolRequest{AddressSpace: ipam.AddressSpace, Pool: id}); err != nil {
		t.Fatal(err)
	}
	gateway := &api.RequestAddressRequest{PoolID: id, Address: "198.18.0.1", Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}}
	router := &api.RequestAddressRequest{PoolID: id, Address: "198.18.0.254"}
	var released []string
	for _, r := range []*api.RequestAddressRequest{gateway, router} {
		if _, err := d.RequestAddress(r); err != nil {
			t.Fatal(err)
		}
		released = append(released, r.Address)
	}
	for i := range 150 {
		got, err := d.RequestAddress(&api.RequestAddressRequest{PoolID: id,
			Options: map[string]string{"com.docker.network.endpoint.macaddress": fmt.Sprintf("02:42:c6:12:00:%02x", i)}})
		if err != nil {
			t.Fatal(err)
		}
		released = append(released, strings.TrimSuffix(got.Address, "/24"))
	}

	c.etcd.Exhaust(t)
	start := time.Now()
	for _, a := range released[2:] {
		if err := d.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: a}); err != nil {
			t.Fatalf("release of %s with etcd out of space: %v", a, err)
		}
	}
	for _, a := range released[:2] { // docker network rm
		if err := d.ReleaseAddress(&api.ReleaseAddressRequest{PoolID: id, Address: a}); err != nil {
			t.Fatalf("release of %s with etcd out of space: %v", a, err)
		}
	}
	if err := d.ReleasePool(&api.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatalf("release of the pool with etcd out of space: %v", err) // the last reference is a delete, which etcd takes
	}
	t.Logf("152 releases answered with etcd out of space in %s", time.Since(start).Round(time.Millisecond))
	if n := pending.Len(); n != 152 {
		t.Fatalf("%d releases kept, want 152", n)
	}
	_, err = d.RequestAddress(&api.RequestAddressRequest{PoolID: id, Options: map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:01:00"}})
	if err == nil || !strings.Contains(err.Error(), "is out of space (its NOSPACE alarm is raised)") {
		t.Fatalf("allocation with etcd out of space: %v", err)
	}
	out := c.fails("etcd alarm raised: NOSPACE on member", "check")
	if !strings.Contains(out, "alarm NOSPACE on member") || !strings.Contains(out, "ipamctl etcd recover-space") {
		t.Fatalf("check with etcd out of space lists no alarm:\n%s", out)
	}
	out = c.fails("etcd alarm raised: NOSPACE on member", "status")
	if !strings.Contains(out, "ETCD ALARM") {
		t.Fatalf("status with etcd out of space lists no alarm:\n%s", out)
	}

	out = c.ok("etcd", "recover-space")
	if !strings.Contains(out, "disarmed NOSPACE on member") {
		t.Fatalf("recover-space:\n%s", out)
	}
	t.Logf("recover-space:\n%s", out)
	recovered := time.Now()
	for pending.Len() > 0 {
		if time.Since(recovered) > 45*time.Second {
			t.Fatalf("%d kept releases not applied 45s after the recovery", pending.Len())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("kept releases applied %s after the recovery", time.Since(recovered).Round(time.Millisecond))
	subnet := netip.MustParsePrefix(id)
	for _, a := range released {
		e, err := store.Entry(ctx(t), subnet, netip.MustParseAddr(a))
		if err != nil || !e.Free || e.Used != nil {
			t.Errorf("%s after the recovery: %+v %v, want free", a, e, err)
		}
	}
	if got := okJSON[[]checkJSON](c, "check"); len(got) != 1 || len(got[0].Anomalies) != 0 {
		t.Fatalf("check after the recovery: %+v", got)
	}
}
