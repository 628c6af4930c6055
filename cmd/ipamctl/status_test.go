package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/ipam"
)

// TestStatus: etcd's member, this host's daemon liveness and the pools in
// one command, which fails while the host's daemon is not alive.
func TestStatus(t *testing.T) {
	c := newCtl(t)
	populate(t, c)

	out, _, err := c.run("status", "--json")
	if err == nil || !strings.Contains(err.Error(), `the daemon of host "ctl" is unknown`) {
		t.Fatalf("status without a daemon: %v", err)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(st.Etcd) != 1 || st.Etcd[0].Version == "" || !st.Etcd[0].Leader || st.Etcd[0].DBSize == 0 || len(st.Etcd[0].Errors) != 0 {
		t.Errorf("etcd: %+v", st.Etcd)
	}
	if len(st.Pools) != 1 || st.Pools[0].Subnet != "198.18.1.0/24" || st.Pools[0].Used != 5 {
		t.Errorf("pools: %+v", st.Pools)
	}

	_, store := c.pools("ctl")
	k, err := store.StartKeeper(ctx(t), etcdstore.HostRecord{Host: "ctl", Since: time.Now(), PID: 4242}, etcdstore.KeeperConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Stop(context.Background()) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, _, err := c.run("status"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("status with a live daemon: %v", err)
		}
	}
	st = okJSON[statusJSON](c, "status")
	if h := *st.Host; h.State != etcdstore.HostAlive || h.PID != 4242 || h.LeaseLeft == "" || h.LastSeen.IsZero() {
		t.Errorf("host: %+v", h)
	}
	table := c.ok("status")
	for _, want := range []string{"ETCD ENDPOINT", c.etcd.Endpoints()[0], "ctl", "alive", "4242", "198.18.1.0/24"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
}

// TestStatusEndpointDown: with one endpoint down, status still answers
// within a few seconds with a row per endpoint (the down one with why),
// this host and the pools, and exits non-zero. A frozen member (SIGSTOP)
// is, to a new client, a port that accepts connections and never answers.
func TestStatusEndpointDown(t *testing.T) {
	c := newCtl(t)
	populate(t, c)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	for _, tc := range []struct{ name, down string }{
		{"closed port", "http://" + testproc.FreeLoopbackAddr(t)},
		{"frozen member", "http://" + silent.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &ctl{t: t, etcd: c.etcd, extra: []string{tc.down}}
			up := c.etcd.Endpoints()[0]

			start := time.Now()
			out, _, err := c.run("status")
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("status took %s with one endpoint down", took)
			}
			if err == nil || !strings.Contains(err.Error(), "etcd "+tc.down+" does not answer") {
				t.Errorf("status error: %v", err)
			}
			rows := map[string]string{}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 0 {
					rows[f[0]] = line
				}
			}
			if r := rows[up]; !strings.Contains(r, " yes ") {
				t.Errorf("row of %s (the leader): %q\n%s", up, r, out)
			}
			if r := rows[tc.down]; !strings.Contains(r, "no answer within 2s") {
				t.Errorf("row of %s (down): %q\n%s", tc.down, r, out)
			}
			if !strings.Contains(rows["ctl"], "unknown") || !strings.Contains(rows["198.18.1.0/24"], "100") {
				t.Errorf("host or pool rows missing:\n%s", out)
			}

			out, _, err = c.run("status", "--json")
			if err == nil {
				t.Error("status --json exited 0 with an endpoint down")
			}
			var st statusJSON
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(st.Etcd) != 2 || st.Etcd[0].Version == "" || st.Etcd[1].Version != "" || len(st.Etcd[1].Errors) != 1 {
				t.Errorf("etcd: %+v", st.Etcd)
			}
			if st.Host == nil || len(st.Pools) != 1 {
				t.Errorf("host %+v, pools %+v", st.Host, st.Pools)
			}
		})
	}
	t.Run("all down", func(t *testing.T) {
		app := newApp()
		var out bytes.Buffer
		app.Writer, app.ErrWriter = &out, &out
		start := time.Now()
		err := app.Run([]string{"ipamctl", "--etcd-endpoints", "http://" + silent.Addr().String(), "status"})
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("status took %s with every endpoint down", took)
		}
		if err == nil || !strings.Contains(err.Error(), "no etcd endpoint answers") {
			t.Errorf("status error: %v", err)
		}
		if !strings.Contains(out.String(), "no answer within 2s") || strings.Contains(out.String(), "HOST") {
			t.Errorf("status output, want the endpoint's row only:\n%s", out.String())
		}
	})
}

// TestStatusNamelessSticky: when a sticky network's dockerd sends no
// endpoint names (before Docker 29), the daemon's warning reaches status
// through the host's lastseen record, as the daemon wires it (the driver's
// NamelessSticky in the keeper's config), and goes once the dockerd sends
// names again (upgraded while the daemon ran).
func TestStatusNamelessSticky(t *testing.T) {
	c := newCtl(t)
	pools, store := c.pools("ctl")
	d := &ipam.Driver{Pools: pools, Timeout: 5 * time.Second, Log: slog.New(slog.DiscardHandler)}
	const subnet = "198.18.9.0/24"
	p, err := d.RequestPool(&api.RequestPoolRequest{AddressSpace: ipam.AddressSpace, Pool: subnet, SubPool: "198.18.9.0/28",
		Options: map[string]string{ipam.OptSticky: ipam.StickyName}})
	if err != nil {
		t.Fatal(err)
	}
	// A TTL of 1s makes the keeper's rounds, and so lastseen, every 1/3 s.
	k, err := store.StartKeeper(ctx(t), etcdstore.HostRecord{Host: "ctl", Since: time.Now()},
		etcdstore.KeeperConfig{TTL: time.Second, SeenEvery: time.Millisecond, NamelessSticky: d.NamelessSticky})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Stop(context.Background()) })
	request := func(opts map[string]string) {
		t.Helper()
		if _, err := d.RequestAddress(&api.RequestAddressRequest{PoolID: p.PoolID, Options: opts}); err != nil {
			t.Fatal(err)
		}
	}
	shows := func(want []string) {
		t.Helper()
		var got []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if got = okJSON[statusJSON](c, "status").Host.NamelessSticky; slices.Equal(got, want) {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("status shows nameless sticky networks %q, want %q", got, want)
			}
		}
	}

	request(map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:09:01", "com.docker.network.endpoint.name": "db"})
	shows(nil)
	request(map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:09:02"}) // Docker 20.10
	shows([]string{subnet})
	table := c.ok("status") // exit 0: allocations work, ordinarily
	for _, want := range []string{"warning: host ctl's dockerd sends no endpoint names", "sticky networks of pool " + subnet, "upgrade"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	request(map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:09:03", "com.docker.network.endpoint.name": "web"})
	shows(nil)
	if table := c.ok("status"); strings.Contains(table, "warning") {
		t.Errorf("status still warns once names come:\n%s", table)
	}
}
