package ipam_test

import (
	"testing"

	"github.com/talkingdata/ipam/internal/etcdtest"
)

// TestStickyNetworkOnTwoHosts: with --ipam-opt talkingdata.sticky=name, the
// container name dockerd 29 sends binds the address: docker rm -f db &&
// docker run --name db gets it back on this host and on another; a swarm
// task's replacement (same service and slot, new task id) too; a request
// without a name (Docker before 29) gets an ordinary address.
func TestStickyNetworkOnTwoHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPlugin(t, srv, "host-a")
	b := newPlugin(t, srv, "host-b")
	req := map[string]any{"Pool": "198.18.9.0/24", "SubPool": "198.18.9.128/26", "Options": map[string]string{"talkingdata.sticky": "name"}}
	id := a.ok("IpamDriver.RequestPool", req)["PoolID"]
	if id != "198.18.9.0/24@198.18.9.128/26;sticky=name" || b.ok("IpamDriver.RequestPool", req)["PoolID"] != id {
		t.Fatalf("sticky pool id %v", id)
	}
	named := func(n int, name string) map[string]string {
		o := mac(n)
		o["com.docker.network.endpoint.name"] = name
		return o
	}
	run := func(p plugin, n int, name string) string {
		t.Helper()
		return p.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": named(n, name)})["Address"].(string)
	}
	rm := func(p plugin, addr string) {
		t.Helper()
		p.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": addr[:len(addr)-3]})
	}

	db := run(a, 1, "db")
	rm(a, db)
	if again := run(a, 2, "db"); again != db {
		t.Fatalf("db recreated on the same host: %s, want %s", again, db)
	}
	b.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": named(3, "db")}, `bound to name "db"`)
	rm(a, db)
	if moved := run(b, 4, "db"); moved != db {
		t.Fatalf("db moved to another host: %s, want %s", moved, db)
	}

	task := func(id string) string { return "web.1." + id }
	web := run(a, 5, task("x8ks2m5q1v0c9d3f7g2h4j6kl"))
	rm(a, web)
	if again := run(b, 6, task("p0o9i8u7y6t5r4e3w2q1a2s3d")); again != web {
		t.Fatalf("swarm task web.1 replaced: %s, want %s", again, web)
	}

	for i := range 3 {
		plain := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(10 + i)})["Address"].(string)
		if plain == db || plain == web {
			t.Fatalf("request %d without a name got a bound address %s", i, plain)
		}
	}
}
