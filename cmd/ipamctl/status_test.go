package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
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
	k := store.StartKeeper(etcdstore.HostRecord{Host: "ctl", Since: time.Now(), PID: 4242}, etcdstore.KeeperConfig{})
	t.Cleanup(func() { k.Stop(context.Background()) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, _, err := c.run("status"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("status with a live daemon: %v", err)
		}
	}
	st = okJSON[statusJSON](c, "status")
	if h := st.Host; h.State != etcdstore.HostAlive || h.PID != 4242 || h.LeaseLeft == "" || h.LastSeen.IsZero() {
		t.Errorf("host: %+v", h)
	}
	table := c.ok("status")
	for _, want := range []string{"ETCD ENDPOINT", c.etcd.Endpoints()[0], "ctl", "alive", "4242", "198.18.1.0/24"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
}
