package etcdtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestPutGetStopRestart(t *testing.T) {
	s := Start(t)
	if eps := s.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") {
		t.Fatalf("Endpoints() = %q, want one loopback URL", eps)
	}
	c := s.Client(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "/tdtest/k", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	assertValue(t, c, "/tdtest/k", "v1")

	s.Stop(t)
	s.Stop(t) // idempotent
	stopped, cancel1 := context.WithTimeout(context.Background(), time.Second)
	defer cancel1()
	if _, err := c.Get(stopped, "/tdtest/k"); err == nil {
		t.Fatal("get succeeded while etcd was stopped")
	}

	s.Restart(t)
	assertValue(t, c, "/tdtest/k", "v1") // same data dir: the key survived
}

func TestMaxTxnOps(t *testing.T) {
	c := Start(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ops := make([]clientv3.Op, 129)
	for i := range ops {
		ops[i] = clientv3.OpPut(fmt.Sprintf("/tdtest/txn/%03d", i), "v")
	}
	if _, err := c.Txn(ctx).Then(ops[:128]...).Commit(); err != nil {
		t.Fatalf("txn of 128 ops: %v", err)
	}
	if _, err := c.Txn(ctx).Then(ops...).Commit(); err == nil || !strings.Contains(err.Error(), "too many operations") {
		t.Fatalf("txn of 129 ops: err = %v, want too many operations", err)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Endpoints()[0] == b.Endpoints()[0] {
		t.Fatalf("both servers on %s", a.Endpoints()[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Client(t).Put(ctx, "/only/a", "1"); err != nil {
		t.Fatal(err)
	}
	resp, err := b.Client(t).Get(ctx, "/only/a")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Fatal("key written to server a is visible on server b")
	}
}

// assertValue reads key with a generous deadline: right after a restart the client may still be
// backing off before it reconnects.
func assertValue(t *testing.T, c *clientv3.Client, key, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
		t.Fatalf("get %s = %v, want %q", key, resp.Kvs, want)
	}
}
