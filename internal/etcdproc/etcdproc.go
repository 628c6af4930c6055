// Package etcdproc starts etcd clusters, waits until they are healthy and stops them: the one
// place that builds an etcd command line, for the tests (internal/etcdtest), the lab
// (internal/lab, members in network namespaces) and the benchmark (tools/ipambench).
package etcdproc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

const (
	// HealthTimeout bounds the wait for a member to answer /health: a first election included.
	HealthTimeout = 30 * time.Second
	stopGrace     = 10 * time.Second
	logTailLines  = 30
)

// Member is one member of a cluster. Its directory holds data/ and etcd.log.
type Member struct {
	Name      string
	Dir       string
	ClientURL string
	PeerURL   string
	NetNS     string // /run/netns/NAME to run in; "": this process's
}

// Cluster is the members of one cluster and how they run.
type Cluster struct {
	Bin     string
	Members []Member
	Token   string   // --initial-cluster-token
	Flags   []string // extra flags for every member, e.g. TLS or a quota
	// Detach runs members in their own session, outliving this process (the lab, which
	// restarts and kills them from other processes through the pid files it keeps); else they
	// die with it.
	Detach bool
	// TLS is what the health check presents to https client URLs; Dial, if set, dials for it
	// (the lab's members are reachable from its switch's namespace only).
	TLS  *tls.Config
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	procs []*testproc.Proc
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.ClientURL
	}
	return eps
}

// args is member i's command line. On a restart its data dir exists and etcd ignores the
// --initial-cluster* flags, rejoining as the member it was.
func (c *Cluster) args(i int) []string {
	m := c.Members[i]
	initial := make([]string, len(c.Members))
	for j, o := range c.Members {
		initial[j] = o.Name + "=" + o.PeerURL
	}
	args := []string{
		"--name", m.Name, "--data-dir", filepath.Join(m.Dir, "data"),
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
		// The default, spelled out: the per-transaction limit our transactions are built for.
		"--max-txn-ops", "128",
		"--logger", "zap", "--log-outputs", "stderr",
	}
	if c.Token != "" {
		args = append(args, "--initial-cluster-token", c.Token)
	}
	return append(args, c.Flags...)
}

// Start starts every member and waits until each is healthy. On failure it stops them all
// and the error carries their log tails.
func (c *Cluster) Start(ctx context.Context) error {
	for i := range c.Members {
		if err := c.Spawn(i); err != nil {
			c.Stop()
			return err
		}
	}
	for i := range c.Members {
		if err := c.WaitHealthy(ctx, i); err != nil {
			c.Stop()
			return err
		}
	}
	return nil
}

// StartMember starts member i again (it must be stopped) and waits until it is healthy.
func (c *Cluster) StartMember(ctx context.Context, i int) error {
	if err := c.Spawn(i); err != nil {
		return err
	}
	return c.WaitHealthy(ctx, i)
}

// Proc is member i's process as this cluster last started it, or nil.
func (c *Cluster) Proc(i int) *testproc.Proc {
	if c.procs == nil {
		return nil
	}
	return c.procs[i]
}

// StopMember ends member i gracefully (SIGTERM, SIGKILL after 10s) and reports whether it had
// to kill; a stopped member is fine.
func (c *Cluster) StopMember(i int) (killed bool) {
	if c.procs == nil || c.procs[i] == nil {
		return false
	}
	killed = c.procs[i].Stop(stopGrace)
	c.procs[i] = nil
	return killed
}

// Stop stops every member.
func (c *Cluster) Stop() {
	for i := range c.procs {
		c.StopMember(i)
	}
}

// Tails are the log tails of the members.
func (c *Cluster) Tails() string {
	var b strings.Builder
	for _, m := range c.Members {
		log := filepath.Join(m.Dir, "etcd.log")
		fmt.Fprintf(&b, "%s log tail (%s):\n%s\n", m.Name, log, testproc.Tail(log, logTailLines))
	}
	return b.String()
}

// Spawn starts member i without waiting for it.
func (c *Cluster) Spawn(i int) error {
	if c.procs == nil {
		c.procs = make([]*testproc.Proc, len(c.Members))
	}
	m := c.Members[i]
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return err
	}
	bin, args := c.Bin, c.args(i)
	if m.NetNS != "" {
		bin, args = testproc.LookTool("nsenter"), append([]string{"--net=" + m.NetNS, "--", c.Bin}, args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = testproc.EnvWithout("ETCD_") // etcd reads ETCD_* variables as flags
	p, err := testproc.Spawn(m.Name, filepath.Join(m.Dir, "etcd.log"), cmd, c.Detach)
	if err != nil {
		return err
	}
	c.procs[i] = p
	return nil
}

// WaitHealthy polls member i's /health, which says true once the member sees a leader and
// answers a quorum read. Any member exiting ends the wait: there may be no quorum without it.
func (c *Cluster) WaitHealthy(ctx context.Context, i int) error {
	m, p := c.Members[i], c.procs[i]
	tr := &http.Transport{TLSClientConfig: c.TLS, DialContext: c.Dial}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Timeout: time.Second, Transport: tr}
	deadline := time.Now().Add(HealthTimeout)
	for !Healthy(hc, m.ClientURL) {
		var err error
		for _, q := range c.procs {
			if q != nil && q.Exited() {
				p, err = q, errors.New(q.Name+" exited during startup")
			}
		}
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if err == nil && time.Now().After(deadline) {
			err = errors.New("not healthy after " + HealthTimeout.String())
		}
		if err != nil {
			return fmt.Errorf("etcd %s at %s: %w\n%s", m.Name, m.ClientURL, err, p.Tail(logTailLines))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// Healthy asks url's /health once.
func Healthy(hc *http.Client, url string) bool {
	resp, err := hc.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`)
}

// StartLoopback starts c as n members on free 127.0.0.1 ports, named etcd1…, in dir/etcd1…;
// scheme is that of the client URLs (https when c.Flags set up TLS). Free ports are found by
// binding :0 and closing, so another process may take one before etcd binds it: then it
// starts over on new ports and fresh data dirs.
func (c *Cluster) StartLoopback(ctx context.Context, dir string, n int, scheme string) error {
	for attempt := 1; ; attempt++ {
		c.Members = make([]Member, n)
		for i := range c.Members {
			cl, err := testproc.LoopbackAddr()
			if err != nil {
				return err
			}
			peer, err := testproc.LoopbackAddr()
			if err != nil {
				return err
			}
			name := "etcd" + strconv.Itoa(i+1)
			c.Members[i] = Member{Name: name, Dir: filepath.Join(dir, name), ClientURL: scheme + "://" + cl, PeerURL: "http://" + peer}
		}
		err := c.Start(ctx)
		if err == nil || attempt == 5 || ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		for _, m := range c.Members {
			if err := os.RemoveAll(filepath.Join(m.Dir, "data")); err != nil {
				return err
			}
		}
	}
}
