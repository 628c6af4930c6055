package ipam_test

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/etcdtest"
)

// TestOneTransactionPerRequest: the hot path is at most one etcd round
// trip per call. A RequestAddress picks from the watch-fed copy of the free
// set and sends one transaction; its ReleaseAddress swaps what the claim
// wrote without reading it first, in the next claim's transaction when
// that follows within its linger. Counted by the etcd server itself.
func TestOneTransactionPerRequest(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newPlugin(t, srv, "host-a", "198.18.0.11")
	id := a.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "talkingdata", "Pool": "198.18.0.0/22"})["PoolID"]
	// The first request loads the free set and the pool's ranges.
	first := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(0)})["Address"].(string)
	a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": strings.Split(first, "/")[0]})

	const cycles = 50
	before := etcdCalls(t, srv)
	for i := 1; i <= cycles; i++ {
		got := a.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac(i)})["Address"].(string)
		a.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": strings.Split(got, "/")[0]})
	}
	if err := a.pools.WaitReleases(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := etcdCalls(t, srv)
	for method, want := range map[string]float64{"Range": 0, "Put": 0, "DeleteRange": 0} {
		if got := after[method] - before[method]; got != want {
			t.Errorf("%d allocate/release cycles made %g etcd %s calls, want %g", cycles, got, method, want)
		}
	}
	if got := after["Txn"] - before["Txn"]; got < cycles || got > 2*cycles {
		t.Errorf("%d allocate/release cycles made %g etcd Txn calls, want %d to %d", cycles, got, cycles, 2*cycles)
	}
}

// etcdCalls reads the etcd server's count of KV calls per method from its
// /metrics.
func etcdCalls(t *testing.T, srv *etcdtest.Server) map[string]float64 {
	t.Helper()
	resp, err := http.Get(srv.Endpoints()[0] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	calls := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_handled_total{") || !strings.Contains(line, `grpc_service="etcdserverpb.KV"`) {
			continue
		}
		_, rest, _ := strings.Cut(line, `grpc_method="`)
		method, _, _ := strings.Cut(rest, `"`)
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err != nil {
			t.Fatalf("etcd metrics line %q: %v", line, err)
		}
		calls[method] += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return calls
}
