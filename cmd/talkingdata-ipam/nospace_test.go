package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/releasequeue"
)

// TestNoSpaceKeptAcrossRestart: with etcd out of space the daemon answers
// releases with success and keeps them in --data-dir; /healthz fails and
// names the alarm, and it and the metrics count what is kept; a restart
// reads them back; once etcd has room they are applied.
func TestNoSpaceKeptAcrossRestart(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.SmallQuota)
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	sock, data := filepath.Join(dir, "td.sock"), filepath.Join(dir, "data")
	addr := testproc.FreeLoopbackAddr(t)
	args := []string{"--etcd-endpoints", srv.Endpoints()[0], "--metrics-addr", addr}
	d := startDaemon(t, bin, sock, data, args...)

	const id = "198.18.0.0/28"
	post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": id})
	var got []string
	for i := 1; i <= 2; i++ {
		mac := map[string]string{"com.docker.network.endpoint.macaddress": fmt.Sprintf("02:42:c6:12:00:%02x", i)}
		a, _, _ := strings.Cut(post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac})["Address"].(string), "/")
		got = append(got, a)
	}
	srv.Exhaust(t)
	for _, a := range got {
		if out := post(t, sock, "IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": a}); out["Err"] != nil {
			t.Fatalf("release of %s with etcd out of space: %v", a, out)
		}
	}
	// A container's release is answered before its commit, so its keeping
	// follows the answer by a moment: look for up to 10 s.
	health := func(wantCode int, want ...string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			code, body := get(t, "http://"+addr+"/healthz")
			missing := code != wantCode
			for _, w := range want {
				missing = missing || !strings.Contains(body, w)
			}
			if !missing {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/healthz: %d %q, want %d and %q", code, body, wantCode, want)
			}
		}
	}
	health(http.StatusServiceUnavailable, "etcd alarm raised: NOSPACE on member", "2 releases etcd refused for want of space are kept")
	if m := scrape(t, "http://"+addr+"/metrics"); m["talkingdata_releases_pending"] != 2 {
		t.Fatalf("talkingdata_releases_pending = %g, want 2", m["talkingdata_releases_pending"])
	}

	d.stop(t)
	var kept []pool.Pending
	if b, err := os.ReadFile(filepath.Join(data, releasequeue.FileName)); err != nil || json.Unmarshal(b, &kept) != nil || len(kept) != 2 {
		t.Fatalf("%s after a stop: %d releases (%v), want 2", releasequeue.FileName, len(kept), err)
	}
	startDaemon(t, bin, sock, data, args...)
	health(http.StatusServiceUnavailable, "2 releases etcd refused for want of space are kept")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := srv.Client(t)
	if _, err := etcdstore.New(cli, "/talkingdata/ipam").RecoverSpace(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if code, body := get(t, "http://"+addr+"/healthz"); code == http.StatusOK && body == "ok\n" {
			break
		}
		if time.Now().After(deadline) {
			code, body := get(t, "http://"+addr+"/healthz")
			t.Fatalf("/healthz 45s after the recovery: %d %q", code, body)
		}
	}
	if r, err := cli.Get(ctx, "/talkingdata/ipam/used/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 0 {
		t.Fatalf("%d addresses used after the kept releases were applied (%v), want 0", r.Count, err)
	}
}
