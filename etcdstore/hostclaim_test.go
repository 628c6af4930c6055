package etcdstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
)

// putHostKey writes the host key of a daemon that no longer renews its
// lease (crashed, or its machine gone), bound to a lease of ttl.
func putHostKey(t *testing.T, cli *clientv3.Client, rec etcdstore.HostRecord, ttl int64) {
	t.Helper()
	g, err := cli.Grant(ctxT(t, 2*time.Second), ttl)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rec)
	if _, err := cli.Put(ctxT(t, 2*time.Second), "/test/hosts/"+rec.Host, string(b), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
}

// hostKey is the host key's record and lease.
func hostKey(t *testing.T, cli *clientv3.Client, host string) (etcdstore.HostRecord, clientv3.LeaseID) {
	t.Helper()
	r, err := cli.Get(ctxT(t, 2*time.Second), "/test/hosts/"+host)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("host key of %s: %v %v", host, r, err)
	}
	var rec etcdstore.HostRecord
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec, clientv3.LeaseID(r.Kvs[0].Lease)
}

// A daemon of the same boot (its predecessor crashed, or the plugin was
// restarted) takes the host key over at once, though its lease is live.
func TestHostTakeOverSameBoot(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	putHostKey(t, cli, hostRecord("h1", "boot-1"), 15)

	rec := hostRecord("h1", "boot-1")
	start := time.Now()
	k, err := s.StartKeeper(ctxT(t, 10*time.Second), rec, fastKeeper)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop(context.Background())
	if took := time.Since(start); took > time.Second {
		t.Errorf("taking over the predecessor's key took %s", took)
	}
	if got, lease := hostKey(t, cli, "h1"); got.Instance != rec.Instance || lease != k.Lease() {
		t.Fatalf("host key after the start: instance %s, lease %x; want %s, %x", got.Instance, lease, rec.Instance, k.Lease())
	}
}

// A second daemon of another boot id is refused while the first renews
// its lease, naming it; the first keeps the key.
func TestHostRefusedOtherBoot(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	first := hostRecord("h1", "boot-a")
	k, err := s.StartKeeper(ctxT(t, 10*time.Second), first, fastKeeper)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop(context.Background())

	start := time.Now()
	_, err = s.StartKeeper(ctxT(t, 10*time.Second), hostRecord("h1", "boot-b"), fastKeeper)
	took := time.Since(start)
	var taken *etcdstore.HostTakenError
	if !errors.As(err, &taken) || taken.Other.Instance != first.Instance {
		t.Fatalf("second daemon: %v; want a HostTakenError naming instance %s", err, first.Instance)
	}
	for _, want := range []string{`"test"`, fmt.Sprintf("pid %d", first.PID), first.Instance} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	// Seen once the renewals moved the lease's expiry by over 2s, at the
	// latest when the watch ends, 3s after the expiry first read.
	if took > fastKeeper.TTL+4*time.Second {
		t.Errorf("refused after %s", took)
	}
	t.Logf("refused after %s: %v", took.Round(time.Millisecond), err)
	if got, lease := hostKey(t, cli, "h1"); got.Instance != first.Instance || lease != k.Lease() {
		t.Fatalf("host key after the refusal: instance %s, lease %x; want %s, %x", got.Instance, lease, first.Instance, k.Lease())
	}
}

// A key of another boot id whose lease nobody renews (its machine is gone)
// is taken over once the lease expires.
func TestHostTakeOverAfterExpiry(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	putHostKey(t, cli, hostRecord("h1", "boot-a"), 2)

	rec := hostRecord("h1", "boot-b")
	start := time.Now()
	k, err := s.StartKeeper(ctxT(t, 10*time.Second), rec, fastKeeper)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop(context.Background())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("taking over an expiring key took %s; want about its 2s TTL", took)
	} else {
		t.Logf("took over after %s", took.Round(time.Millisecond))
	}
	if got, lease := hostKey(t, cli, "h1"); got.Instance != rec.Instance || lease != k.Lease() {
		t.Fatalf("host key: instance %s, lease %x; want %s, %x", got.Instance, lease, rec.Instance, k.Lease())
	}
}

// syncBuffer is a log that keepers write while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Daemons of three machines with one host id, started while etcd was
// down (so none was refused): one holds the key, the others log it and
// leave it alone; a twin's stop does not mark the host stopped; when the
// holder stops, a twin takes the key.
func TestHostTwinsDoNotFight(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	s := etcdstore.New(cli, "/test")
	srv.Stop(t)
	type twin struct {
		rec etcdstore.HostRecord
		k   *etcdstore.Keeper
		log *syncBuffer
	}
	var twins []*twin
	for _, boot := range []string{"boot-a", "boot-b", "boot-c"} {
		tw := &twin{rec: hostRecord("h1", boot), log: &syncBuffer{}}
		cfg := fastKeeper
		cfg.Log = slog.New(slog.NewTextHandler(tw.log, nil))
		var err error
		if tw.k, err = s.StartKeeper(ctxT(t, 10*time.Second), tw.rec, cfg); err != nil {
			t.Fatalf("start with etcd down: %v", err)
		}
		defer tw.k.Stop(context.Background())
		twins = append(twins, tw)
	}
	srv.Restart(t)

	h := waitStatus(t, s, "h1", "alive", alive)
	var holder *twin
	var rest []*twin
	for _, tw := range twins {
		if tw.rec.Instance == h.Live.Instance {
			holder = tw
		} else {
			rest = append(rest, tw)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n := 0
		for _, tw := range rest {
			if l := tw.log.String(); strings.Contains(l, "level=ERROR") && strings.Contains(l, holder.rec.Instance) {
				n++
			}
		}
		if n == len(rest) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the twins did not log the holder %s within 10s:\n%s\n%s", holder.rec.Instance, rest[0].log, rest[1].log)
		}
	}
	r, err := cli.Get(ctxT(t, 2*time.Second), "/test/hosts/h1")
	if err != nil {
		t.Fatal(err)
	}
	rev := r.Kvs[0].ModRevision
	time.Sleep(3 * fastKeeper.TTL / 3) // three rounds of every keeper
	if r, err := cli.Get(ctxT(t, 2*time.Second), "/test/hosts/h1"); err != nil || r.Kvs[0].ModRevision != rev {
		t.Fatalf("host key after three rounds: %v %v; want it untouched since revision %d", r.Kvs, err, rev)
	}

	if err := rest[0].k.Stop(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	cen, err := s.Census(ctxT(t, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h := cen.Status("h1"); h.State() != etcdstore.HostAlive || h.Live.Instance != holder.rec.Instance ||
		h.LastSeen.Stopped || h.LastSeen.Instance != holder.rec.Instance {
		t.Fatalf("after a twin stopped: %s, %+v, %+v; want alive, held and last seen by %s", h.State(), h.Live, h.LastSeen, holder.rec.Instance)
	}

	if err := holder.k.Stop(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitStatus(t, s, "h1", "held by the last twin", func(h *etcdstore.HostStatus) bool {
		return alive(h) && h.Live.Instance == rest[1].rec.Instance && h.LastSeen.Instance == rest[1].rec.Instance
	})
	t.Logf("the last twin took the key %s after the holder stopped", time.Since(start).Round(time.Millisecond))
}
