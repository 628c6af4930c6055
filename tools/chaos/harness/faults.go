package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/talkingdata/ipam/internal/lab"
)

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

// leader returns the member (1-3) that is the etcd leader, asking each running member.
func (r *runner) leader(ctx context.Context) (int, error) {
	var errs []error
	for k, ep := range r.lab.Etcd() {
		if !r.lab.EtcdAlive(k + 1) {
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

// leaderLoop kills the etcd leader every LeaderEvery and restarts it EtcdDown later, so a new
// leader is elected while the load runs. Only one member is ever down: the cluster keeps its
// quorum. A member it killed is always restarted, also when ctx ends meanwhile.
func (r *runner) leaderLoop(ctx context.Context) {
	rest := max(r.cfg.LeaderEvery-r.cfg.EtcdDown, 0)
	for sleep(ctx, rest) {
		var k int
		var err error
		for range 50 { // an election may be under way
			if k, err = r.leader(ctx); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			if ctx.Err() == nil {
				r.faultErr("finding the etcd leader: %v", err)
			}
			continue
		}
		if err := r.lab.KillEtcd(k); err != nil {
			r.faultErr("killing etcd%d: %v", k, err)
			continue
		}
		r.leaderKills.Add(1)
		r.logf("fault: killed etcd%d (the leader)", k)
		time.Sleep(r.cfg.EtcdDown)
		if err := r.lab.StartEtcd(k); err != nil {
			r.faultErr("restarting etcd%d: %v", k, err)
			continue
		}
		r.logf("fault: etcd%d restarted and healthy", k)
	}
}

// pluginLoop kills a random host's plugin every PluginEvery (kill -9: the socket file stays)
// and restarts it PluginDown later on the same socket.
func (r *runner) pluginLoop(ctx context.Context) {
	rest := max(r.cfg.PluginEvery-r.cfg.PluginDown, 0)
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0))
	for sleep(ctx, rest) {
		h := 1 + rng.IntN(len(r.plugins))
		if err := r.lab.KillPlugin(h); err != nil {
			r.faultErr("killing the plugin of h%d: %v", h, err)
			continue
		}
		r.pluginKills.Add(1)
		r.logf("fault: killed the plugin of h%d", h)
		time.Sleep(r.cfg.PluginDown)
		if err := r.lab.StartPlugin(h); err != nil {
			r.faultErr("restarting the plugin of h%d: %v", h, err)
			continue
		}
		r.logf("fault: plugin of h%d restarted", h)
	}
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
