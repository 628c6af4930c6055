package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
)

// livenessStopTimeout bounds the shutdown's last writes: a dead etcd must
// not hold up the exit, and the lease expires by itself anyway.
const livenessStopTimeout = 3 * time.Second

// bootIDFile is the kernel's id of this boot: the same for every process
// of the machine, containers and the managed plugin included, and another
// one on a cloned machine.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// liveness keeps this host announced in etcd while the daemon runs:
// `ipamctl host ls` shows it alive, and `ipamctl gc --dead-hosts` leaves
// its addresses alone. Losing etcd never stops the daemon; the keeper
// announces the host again when etcd is back.
type liveness struct {
	keeper *etcdstore.Keeper
	log    *slog.Logger
}

// startLiveness announces the host before the daemon serves. It fails
// only when another machine's daemon runs with this host id (or ctx ends
// while it finds out): both would release each other's addresses.
// nameless lists the sticky networks' subnets whose dockerd sends no
// endpoint names (ipam.Driver.NamelessSticky), for lastseen.
func startLiveness(ctx context.Context, store *etcdstore.Store, host string, nameless func() []string, log *slog.Logger) (*liveness, error) {
	hostname, _ := os.Hostname() // only shown to operators; "" is fine
	rec := etcdstore.HostRecord{Host: host, Since: time.Now().UTC(), Hostname: hostname, PID: os.Getpid(),
		Instance: rand.Text()[:16], // 80 random bits, short enough for a table column
		BootID:   bootID(log)}
	k, err := store.StartKeeper(ctx, rec, etcdstore.KeeperConfig{Log: log, NamelessSticky: nameless})
	if err != nil {
		return nil, fmt.Errorf("announcing host id %q in etcd (set by --host-id or IPAM_HOST_ID): %w", host, err)
	}
	return &liveness{keeper: k, log: log}, nil
}

// bootID is this boot's id, "" if unknown: then a restart waits for the
// previous daemon's lease to run out instead of taking its key at once.
func bootID(log *slog.Logger) string {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		log.Warn("cannot read the boot id; after a crash the next start waits out the old lease", "err", err)
	}
	return strings.TrimSpace(string(b))
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
