// Package etcdtest starts real, single-member etcd servers for tests.
//
// Each Server is a separate etcd process (etcdproc) on random loopback ports with its data under
// t.TempDir(), so tests never share state and never touch a developer's own etcd.
package etcdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/talkingdata/ipam/internal/etcdproc"
	"github.com/talkingdata/ipam/internal/testproc"
)

// Server is one real etcd process started for a test.
type Server struct {
	dir string // the test's temp dir: etcd1/data and etcd1/etcd.log live here

	// The client URL's scheme, etcd's extra flags (Start's, or StartSecure's TLS and auth
	// flags), and what Client and the health check connect with.
	scheme     string
	extraArgs  []string
	tls        *tls.Config
	user, pass string

	mu      sync.Mutex
	cluster etcdproc.Cluster
	running bool
}

// Binary is $TALKINGDATA_ETCD (`make test` also runs the etcd tests with etcd 3.5 from the
// engine cache that way), else etcd on PATH (Debian bookworm's 3.4). It returns what is missing
// instead when there is none.
func Binary() (bin, missing string) {
	if bin = os.Getenv("TALKINGDATA_ETCD"); bin != "" {
		if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Sprintf("etcdtest: TALKINGDATA_ETCD=%s is not an executable (`make test` sets it to etcd 3.5 of the engine cache, which `make test-deps` installs)", bin)
		}
		return bin, ""
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return "", "etcdtest: no etcd binary (Debian package etcd-server)"
	}
	return bin, ""
}

// Start runs a fresh etcd and waits until it reports healthy. It is stopped when the test ends;
// if the test failed, the tail of etcd's log is printed first. flags are added to etcd's
// command line, such as "--quota-backend-bytes=…".
func Start(t testing.TB, flags ...string) *Server {
	t.Helper()
	s := newServer(t)
	s.extraArgs = flags
	s.launch(t)
	return s
}

// newServer finds etcd and prepares a Server in a fresh temp dir, stopped
// when the test ends; launch starts it.
func newServer(t testing.TB) *Server {
	t.Helper()
	bin, miss := Binary()
	testproc.Require(t, miss == "", miss)
	s := &Server{dir: t.TempDir(), scheme: "http", cluster: etcdproc.Cluster{Bin: bin}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.cluster.Tails())
		}
		s.Stop(t)
	})
	return s
}

// launch starts etcd on fresh ports.
func (s *Server) launch(t testing.TB) {
	t.Helper()
	s.cluster.Flags, s.cluster.TLS = s.extraArgs, s.tls
	if err := s.cluster.StartLoopback(context.Background(), s.dir, 1, s.scheme); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	s.running = true
}

// Endpoints returns the client URLs to give to clientv3 or etcdctl.
func (s *Server) Endpoints() []string { return s.cluster.Endpoints() }

// Client returns a client for this server that is closed when the test ends. For a
// StartSecure server it presents the test client certificate and, with auth, logs in as root.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	// A silent logger: tests stop etcd on purpose, and the client's retry
	// warnings would bury the test's own output.
	c, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		TLS: s.tls, Username: s.user, Password: s.pass})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Stop ends etcd gracefully (SIGTERM), killing it if it has not exited within 10s.
// Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	if s.cluster.StopMember(0) {
		t.Logf("etcdtest: etcd ignored SIGTERM; killed it")
	}
	s.running = false
}

// Restart stops etcd and starts it again on the same ports with the same data dir.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cluster.StartMember(context.Background(), 0); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
	s.running = true
}
