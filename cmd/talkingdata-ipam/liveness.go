package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
)

// livenessStopTimeout bounds the shutdown's last writes: a dead etcd must
// not hold up the exit, and the lease expires by itself anyway.
const livenessStopTimeout = 3 * time.Second

// liveness keeps this host announced in etcd while the daemon runs:
// `ipamctl host ls` shows it alive, and `ipamctl gc --dead-hosts` leaves
// its addresses alone. Losing etcd never stops the daemon; the keeper
// announces the host again when etcd is back.
type liveness struct {
	keeper *etcdstore.Keeper
	log    *slog.Logger
}

func startLiveness(store *etcdstore.Store, host string, log *slog.Logger) *liveness {
	hostname, _ := os.Hostname() // only shown to operators; "" is fine
	rec := etcdstore.HostRecord{Host: host, Since: time.Now().UTC(), Hostname: hostname, PID: os.Getpid()}
	return &liveness{keeper: store.StartKeeper(rec, etcdstore.KeeperConfig{Log: log}), log: log}
}

// stop records a clean shutdown and revokes the lease, so the host shows
// as stopped at once rather than dead after the TTL.
func (l *liveness) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), livenessStopTimeout)
	defer cancel()
	if err := l.keeper.Stop(ctx); err != nil {
		l.log.Warn("could not record the shutdown in etcd; the host shows as dead once its lease expires", "err", err)
		return
	}
	l.log.Info("liveness lease revoked")
}
