package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/talkingdata/ipam/internal/lab"
)

// faultKind is one kind of disturbance a phase can inject. inject disturbs the lab, undoes it
// (the member or plugin runs again) and returns what it saw for the timeline; it runs to the
// end also when ctx ends, so nothing stays down or frozen. A new kind is one function and one
// entry in faultKinds.
type faultKind struct {
	inject func(r *runner, ctx context.Context, f *faultRecord) error
	// failuresAllowed: dockerd sees failed requests through this fault (a plugin's dead
	// socket), so a phase with it has no budget of 0 failed requests.
	failuresAllowed bool
}

var faultKinds = map[string]faultKind{
	"leader-kill":      {inject: (*runner).leaderKill},
	"leader-freeze":    {inject: func(r *runner, ctx context.Context, f *faultRecord) error { return r.freeze(ctx, f, true) }},
	"follower-freeze":  {inject: func(r *runner, ctx context.Context, f *faultRecord) error { return r.freeze(ctx, f, false) }},
	"follower-restart": {inject: (*runner).followerRestart},
	"plugin-kill":      {inject: (*runner).pluginKill, failuresAllowed: true},
}

// faultRecord is one injected fault: from start to end the lab was disturbed.
type faultRecord struct {
	kind       string
	target     string // "etcd2 (the leader)"
	start, end time.Time
	notes      []string // what was seen meanwhile: elections, recovery
	// recovery is, for a restarted member, the time from it being healthy to the first
	// plugin transaction it served.
	recovery time.Duration
}

func (f *faultRecord) note(format string, args ...any) {
	f.notes = append(f.notes, fmt.Sprintf(format, args...))
}

// dialEtcd is a client of the lab's cluster for the test process, through the lab's switch.
func dialEtcd(l *lab.Lab) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   l.Etcd(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			if _, rest, ok := strings.Cut(addr, "://"); ok {
				addr = rest
			}
			return l.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for lab %s: %w", l.ID, err)
	}
	return cli, nil
}

// leader returns the member (1-3) that is the etcd leader, asking each running member but
// skip (0: none; a frozen member would not answer).
func (r *runner) leader(ctx context.Context, skip int) (int, error) {
	var errs []error
	for k, ep := range r.lab.Etcd() {
		if k+1 == skip || !r.lab.EtcdAlive(k+1) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := r.etcd.Status(sctx, ep)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		if st.Leader != 0 && st.Leader == st.Header.MemberId {
			return k + 1, nil
		}
	}
	return 0, fmt.Errorf("no member is the leader: %w", errors.Join(errs...))
}

// waitLeader waits up to 5s for a leader among the members but skip (an election may be
// under way).
func (r *runner) waitLeader(ctx context.Context, skip int) (int, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		k, err := r.leader(ctx, skip)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return k, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// follower is a running member that is not the leader, picked at random.
func (r *runner) follower(ctx context.Context) (int, error) {
	k, err := r.waitLeader(ctx, 0)
	if err != nil {
		return 0, err
	}
	n := len(r.lab.Etcd())
	return 1 + (k+r.faultRng.IntN(n-1))%n, nil
}

// sleep waits d or until ctx ends; it reports whether ctx is still going.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (r *runner) faultErr(format string, args ...any) {
	msg := stamp(time.Now()) + " " + fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.faultErrs = append(r.faultErrs, msg)
	r.mu.Unlock()
	r.logf("fault error: %s", fmt.Sprintf(format, args...))
}

// leaderKill SIGKILLs the etcd leader and restarts it EtcdDown later: the others elect a new
// leader meanwhile, keeping the quorum.
func (r *runner) leaderKill(ctx context.Context, f *faultRecord) error {
	k, err := r.waitLeader(ctx, 0)
	if err != nil {
		return fmt.Errorf("finding the etcd leader: %w", err)
	}
	return r.killMember(ctx, f, k, "the leader", r.cfg.EtcdDown)
}

// followerRestart SIGKILLs a follower and restarts it MemberDown later. Once it is healthy it
// reports how long until it served a plugin's transaction again: how soon the plugins' clients
// come back to a member that was gone.
func (r *runner) followerRestart(ctx context.Context, f *faultRecord) error {
	k, err := r.follower(ctx)
	if err != nil {
		return err
	}
	if err := r.killMember(ctx, f, k, "a follower", r.cfg.MemberDown); err != nil {
		return err
	}
	healthy := time.Now()
	for time.Since(healthy) < 10*time.Second {
		n, err := r.txnsServed(ctx, k)
		switch {
		case err != nil:
			f.note("reading etcd%d's metrics: %v", k, err)
			return nil
		case n > 0:
			f.recovery = time.Since(healthy)
			f.note("first plugin transaction served %s after etcd%d was healthy (%d by then)", f.recovery.Round(time.Millisecond), k, n)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.note("no plugin transaction served by etcd%d within 10s of it being healthy", k)
	return nil
}

func (r *runner) killMember(ctx context.Context, f *faultRecord, k int, role string, down time.Duration) error {
	f.target = fmt.Sprintf("etcd%d (%s)", k, role)
	if err := r.lab.KillEtcd(k); err != nil {
		return fmt.Errorf("killing etcd%d: %w", k, err)
	}
	f.start = time.Now()
	r.logf("fault: killed etcd%d (%s)", k, role)
	if role == "the leader" {
		if n, err := r.waitLeader(ctx, k); err == nil {
			f.note("etcd%d leader %s after the kill", n, time.Since(f.start).Round(time.Millisecond))
		}
	}
	time.Sleep(time.Until(f.start.Add(down)))
	if err := r.lab.StartEtcd(k); err != nil {
		return fmt.Errorf("restarting etcd%d: %w", k, err)
	}
	f.end = time.Now()
	r.logf("fault: etcd%d restarted and healthy", k)
	return nil
}

// freeze stops the leader or a follower with SIGSTOP for Freeze, as a hung VM or a long
// stall would, then lets it go on (SIGCONT). Its TCP connections stay open meanwhile: the
// plugins' calls on it hang until their clients give up on it.
func (r *runner) freeze(ctx context.Context, f *faultRecord, leader bool) error {
	k, err := r.waitLeader(ctx, 0)
	role := "the leader"
	if !leader {
		k, err = r.follower(ctx)
		role = "a follower"
	}
	if err != nil {
		return err
	}
	f.target = fmt.Sprintf("etcd%d (%s)", k, role)
	pid, err := r.etcdPID(k)
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP etcd%d (pid %d): %w", k, pid, err)
	}
	f.start = time.Now()
	r.logf("fault: froze etcd%d (%s)", k, role)
	if leader {
		if n, err := r.waitLeader(ctx, k); err == nil {
			f.note("etcd%d leader %s after the freeze", n, time.Since(f.start).Round(time.Millisecond))
		}
	}
	time.Sleep(time.Until(f.start.Add(r.cfg.Freeze)))
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("SIGCONT etcd%d (pid %d): %w", k, pid, err)
	}
	f.end = time.Now()
	r.logf("fault: thawed etcd%d", k)
	return nil
}

// etcdPID reads member k's pid file; the lab's etcd-kill signals the same process.
func (r *runner) etcdPID(k int) (int, error) {
	b, err := os.ReadFile(filepath.Join(r.lab.Dir, "etcd"+strconv.Itoa(k), "etcd.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// txnsServed is how many transactions member k answered with OK since it started, per its
// own metrics. The plugins write through Txn; the harness's own reads during the load are
// Range, so these are the plugins'.
func (r *runner) txnsServed(ctx context.Context, k int) (int, error) {
	hc := http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: r.lab.DialContext}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.lab.Etcd()[k-1]+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "grpc_server_handled_total{") && strings.Contains(line, `grpc_code="OK"`) && strings.Contains(line, `grpc_method="Txn"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				return 0, fmt.Errorf("etcd%d metrics: %q: %w", k, line, err)
			}
			n += int(v)
		}
	}
	return n, sc.Err()
}

// pluginKill SIGKILLs a random host's plugin (the socket file stays) and restarts it
// PluginDown later on the same socket.
func (r *runner) pluginKill(_ context.Context, f *faultRecord) error {
	h := 1 + r.faultRng.IntN(len(r.plugins))
	f.target = "the plugin of h" + strconv.Itoa(h)
	err := r.lab.KillPlugin(h)
	// When the plugin is surely gone: a release it answered while the
	// kill was under way counts as answered before it.
	r.mu.Lock()
	if r.pluginKills == nil {
		r.pluginKills = map[string][]time.Time{}
	}
	name := r.plugins[h-1].name
	r.pluginKills[name] = append(r.pluginKills[name], time.Now())
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("killing the plugin of h%d: %w", h, err)
	}
	f.start = time.Now()
	r.logf("fault: killed the plugin of h%d", h)
	time.Sleep(r.cfg.PluginDown)
	if err := r.lab.StartPlugin(h); err != nil {
		return fmt.Errorf("restarting the plugin of h%d: %w", h, err)
	}
	f.end = time.Now()
	r.logf("fault: plugin of h%d restarted", h)
	return nil
}

// restoreAll starts whatever is not running (a restart that failed) and waits until the
// cluster is healthy: every member answers and agrees on the leader, and a quorum read works.
func (r *runner) restoreAll(ctx context.Context) error {
	for k := 1; k <= len(r.lab.Etcd()); k++ {
		if !r.lab.EtcdAlive(k) {
			r.logf("restore: etcd%d is not running; starting it", k)
			if err := r.lab.StartEtcd(k); err != nil {
				return err
			}
		}
	}
	for h := 1; h <= len(r.plugins); h++ {
		if !r.lab.PluginAlive(h) {
			r.logf("restore: the plugin of h%d is not running; starting it", h)
			if err := r.lab.StartPlugin(h); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if last = r.healthy(ctx); last == nil {
			r.logf("restore: cluster healthy, every plugin running")
			return nil
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("etcd not healthy 60s after the faults stopped: %w", last)
}

func (r *runner) healthy(ctx context.Context) error {
	var leader uint64
	for _, ep := range r.lab.Etcd() {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := r.etcd.Status(sctx, ep)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", ep, err)
		}
		if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			return fmt.Errorf("%s: leader %x, others say %x", ep, st.Leader, leader)
		}
		leader = st.Leader
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := r.etcd.Get(sctx, "health-probe")
	return err
}
