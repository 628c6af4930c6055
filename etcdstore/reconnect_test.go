package etcdstore_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// member is one etcd process of a cluster this file starts itself:
// etcdtest stops its servers gracefully, and these tests need SIGKILL,
// SIGSTOP and a restart on the same ports and data after a pause.
type member struct {
	bin, name, dir, client, peer, cluster string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startCluster starts n etcd members on loopback and waits until each is
// healthy. They are killed when the test ends.
func startCluster(t *testing.T, n int) []*member {
	t.Helper()
	bin, missing := etcdtest.Binary()
	testproc.Require(t, bin != "", missing)
	ms := make([]*member, n)
	var peers []string
	for i := range ms {
		ms[i] = &member{bin: bin, name: fmt.Sprintf("m%d", i), dir: t.TempDir(),
			client: "http://" + testproc.FreeLoopbackAddr(t), peer: "http://" + testproc.FreeLoopbackAddr(t)}
		peers = append(peers, ms[i].name+"="+ms[i].peer)
	}
	for _, m := range ms {
		m.cluster = strings.Join(peers, ",")
		m.launch(t)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s log tail:\n%s", m.name, testproc.Tail(filepath.Join(m.dir, "etcd.log"), 20))
			}
			m.kill(t)
		})
	}
	for _, m := range ms {
		m.waitHealthy(t)
	}
	return ms
}

func endpoints(ms []*member) []string {
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.client)
	}
	return eps
}

// launch starts the member's process without waiting for it: the members
// of a new cluster need each other before any is healthy.
func (m *member) launch(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(m.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(m.bin, "--name", m.name, "--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", m.cluster, "--initial-cluster-state", "new",
		"--logger", "zap", "--log-outputs", "stderr")
	cmd.Env = testproc.EnvWithout("ETCD_")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		t.Fatalf("starting %s: %v", m.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
}

// waitHealthy polls /health until the member reports a leader.
func (m *member) waitHealthy(t *testing.T) {
	t.Helper()
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := hc.Get(m.client + "/health")
		if err != nil {
			continue
		}
		ok := resp.StatusCode == http.StatusOK
		resp.Body.Close()
		if ok {
			return
		}
	}
	t.Fatalf("etcd %s at %s not healthy after 20s", m.name, m.client)
}

// kill ends the member with SIGKILL, as a crash would; a killed member
// stays killed.
func (m *member) kill(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Errorf("killing %s: %v", m.name, err)
	}
	<-m.done
	m.cmd = nil
}

// signal sends sig (SIGSTOP, SIGCONT) to the running member.
func (m *member) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v to %s: %v", sig, m.name, err)
	}
}

// put writes one key under a deadline of d.
func put(cli *clientv3.Client, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := cli.Put(ctx, "/reconnect-test", time.Now().String())
	return err
}

// After an outage long enough for gRPC's default reconnect backoff to grow
// to many seconds, the first request once etcd answers again must not wait
// for that backoff.
func TestReconnectAfterRestart(t *testing.T) {
	t.Parallel()
	ms := startCluster(t, 1)
	cli := dial(t, etcdstore.Config{Endpoints: endpoints(ms), DialTimeout: 2 * time.Second})
	if err := put(cli, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	ms[0].kill(t)
	// The daemon keeps being asked during the outage (dockerd, liveness).
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		if err := put(cli, time.Second); err == nil {
			t.Fatal("a write succeeded while etcd was dead")
		}
	}
	ms[0].launch(t)
	ms[0].waitHealthy(t)

	start := time.Now()
	err := put(cli, 15*time.Second)
	took := time.Since(start)
	t.Logf("first write after etcd answered again: %v (err %v)", took, err)
	// The capped backoff retries within 0.8s (+20% jitter); the margin is
	// for a loaded machine. gRPC's default backoff, at its sixth step by
	// now, makes this several seconds.
	if err != nil || took > 2*time.Second {
		t.Fatalf("first write after etcd came back took %v (err %v), want under 2s", took, err)
	}
}

// A frozen member (SIGSTOP) keeps its TCP connections open, so only
// keepalive pings tell it from a slow one. Once they have, requests go to
// the other members instead of hanging on it until their deadline.
func TestFrozenMemberAvoided(t *testing.T) {
	t.Parallel()
	ms := startCluster(t, 3)
	cli := dial(t, etcdstore.Config{Endpoints: endpoints(ms), DialTimeout: 2 * time.Second})
	// Requests are spread over the members: warm a connection to each.
	for range 2 * len(ms) {
		if err := put(cli, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// The leader, as freezing it also costs an election.
	frozen := ms[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, m := range ms {
		st, err := cli.Status(ctx, m.client)
		if err != nil {
			t.Fatalf("status of %s: %v", m.name, err)
		}
		if st.Leader == st.Header.MemberId {
			frozen = m
		}
	}
	frozen.signal(t, syscall.SIGSTOP)
	start := time.Now()

	// Keepalive pings every 10s (gRPC's floor) and gives up after 3s, so
	// within about 20s no request should land on the frozen member.
	// Round robin over three members never gives ten successes in a row
	// while one of them is still picked.
	const bound, wanted = 30 * time.Second, 10
	failed := 0
	for streak := 0; streak < wanted; {
		if time.Since(start) > bound {
			t.Fatalf("requests still reach frozen %s %v after it froze (%d failed)", frozen.name, bound, failed)
		}
		if err := put(cli, 2*time.Second); err != nil {
			failed++
			streak = 0
			continue
		}
		streak++
	}
	t.Logf("%d requests in a row succeeded %v after %s froze; %d failed before", wanted, time.Since(start).Round(time.Millisecond), frozen.name, failed)
}
