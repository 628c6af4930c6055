// Package etcdtest starts real, single-member etcd servers for tests.
//
// Each Server is a separate etcd process on random loopback ports with its data under
// t.TempDir(), so tests never share state and never touch a developer's own etcd.
package etcdtest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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
	"go.uber.org/zap"

	"github.com/talkingdata/ipam/internal/testproc"
)

const (
	healthTimeout = 20 * time.Second
	stopTimeout   = 10 * time.Second
	logTailLines  = 30
)

// Server is one real etcd process started for a test.
type Server struct {
	bin     string
	dir     string // the test's temp dir: data/ and etcd.log live here
	logPath string
	client  string // client URL, e.g. http://127.0.0.1:41234
	peer    string

	// The client URL's scheme, etcd's extra flags (Start's, or StartSecure's TLS and auth
	// flags), and what Client and the health check connect with.
	scheme     string // "http" or "https"
	extraArgs  []string
	tls        *tls.Config
	user, pass string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
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
	s := &Server{bin: bin, dir: t.TempDir(), scheme: "http"}
	s.logPath = filepath.Join(s.dir, "etcd.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd log tail (%s):\n%s", s.logPath, testproc.Tail(s.logPath, logTailLines))
		}
		s.Stop(t)
	})
	return s
}

// launch starts etcd on fresh ports.
func (s *Server) launch(t testing.TB) {
	t.Helper()
	// Free ports are picked by binding :0 and closing, so another process can grab one before
	// etcd binds it: retry with new ports when that happens.
	for attempt := 1; ; attempt++ {
		s.client = s.scheme + "://" + testproc.FreeLoopbackAddr(t)
		s.peer = "http://" + testproc.FreeLoopbackAddr(t)
		err := s.start()
		if err == nil {
			return
		}
		if attempt < 5 && strings.Contains(testproc.Tail(s.logPath, logTailLines), "address already in use") {
			// etcd failed before writing membership, but start from a clean data dir anyway.
			if err := os.RemoveAll(filepath.Join(s.dir, "data")); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Fatalf("etcdtest: %v\netcd log tail:\n%s", err, testproc.Tail(s.logPath, logTailLines))
	}
}

// Endpoints returns the client URLs to give to clientv3 or etcdctl.
func (s *Server) Endpoints() []string { return []string{s.client} }

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
	if s.cmd == nil {
		return
	}
	if pid := s.cmd.Process.Pid; testproc.Terminate(pid, s.done, stopTimeout) {
		t.Logf("etcdtest: etcd (pid %d) ignored SIGTERM for %v; killed it", pid, stopTimeout)
	}
	s.cmd = nil
}

// Restart stops etcd and starts it again on the same ports with the same data dir.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: restart: %v\netcd log tail:\n%s", err, testproc.Tail(s.logPath, logTailLines))
	}
}

// start launches etcd and waits until /health answers.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(s.bin, append([]string{
		"--name", "tdtest",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", s.client,
		"--advertise-client-urls", s.client,
		"--listen-peer-urls", s.peer,
		"--initial-advertise-peer-urls", s.peer,
		"--initial-cluster", "tdtest=" + s.peer,
		"--initial-cluster-state", "new",
		// The default, spelled out so tests hit the same per-transaction limit as production.
		"--max-txn-ops", "128",
		"--logger", "zap",
		"--log-outputs", "stderr",
	}, s.extraArgs...)...)
	cmd.Env = testproc.EnvWithout("ETCD_") // etcd reads ETCD_* variables as flags
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group so Stop can kill everything it started; Pdeathsig so a test binary that
	// dies without running cleanups (e.g. a -timeout panic) does not leave etcd running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(cmd); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	if err := waitHealthy(s.client, s.tls, done); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return err
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// waitHealthy polls etcd's /health endpoint, which reports true once the member has a leader.
func waitHealthy(clientURL string, tc *tls.Config, exited <-chan struct{}) error {
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Timeout: time.Second, Transport: tr}
	deadline := time.Now().Add(healthTimeout)
	for {
		select {
		case <-exited:
			return errors.New("etcd exited during startup")
		default:
		}
		if resp, err := hc.Get(clientURL + "/health"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd at %s not healthy after %v", clientURL, healthTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
