package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Host liveness, and the consistent view `ipamctl gc` works from.
//
//	hosts/<host>     {"host","since","hostname","pid"}: bound to a lease the
//	                 daemon keeps alive; gone within the TTL once the daemon
//	                 stops, crashes or loses etcd
//	lastseen/<host>  {"host","seen","since","stopped"}: no lease; rewritten
//	                 every SeenEvery and at shutdown, so a dead host's age is
//	                 known after its lease key is gone
//
// The lease key answers "is the daemon running now" with etcd's own clock
// (the TTL runs on the server); lastseen answers "for how long not", with
// the daemon's clock.

func (k keys) host(id string) string     { return k.prefix + "hosts/" + id }
func (k keys) hostsDir() string          { return k.prefix + "hosts/" }
func (k keys) lastSeen(id string) string { return k.prefix + "lastseen/" + id }
func (k keys) lastSeenDir() string       { return k.prefix + "lastseen/" }

// Liveness defaults.
const (
	// DefaultLeaseTTL: a crashed daemon shows as gone after this long, and
	// a daemon survives an etcd outage or partition this long without
	// having to re-announce itself.
	DefaultLeaseTTL = 15 * time.Second
	// DefaultSeenEvery is how often lastseen is rewritten: a dead host's
	// age is known to within this, at one write per host per period.
	DefaultSeenEvery = 30 * time.Second
	// defaultCallTimeout bounds each liveness call to etcd.
	defaultCallTimeout = 5 * time.Second
)

// HostRecord is the value of a host's lease-bound key.
type HostRecord struct {
	Host     string    `json:"host"`
	Since    time.Time `json:"since"` // when the daemon started
	Hostname string    `json:"hostname,omitempty"`
	PID      int       `json:"pid,omitempty"`
}

// LastSeen is the value of a host's lastseen key.
type LastSeen struct {
	Host  string    `json:"host"`
	Seen  time.Time `json:"seen"`
	Since time.Time `json:"since"` // when the daemon that wrote it started
	// Stopped is set by a clean shutdown; a crash leaves it false.
	Stopped bool `json:"stopped,omitempty"`
}

// HostStatus is what etcd knows about one host's daemon.
type HostStatus struct {
	Host string
	// Live is the lease-bound record; nil when no daemon of this host has
	// reached etcd within the lease TTL.
	Live     *HostRecord
	LastSeen *LastSeen // nil when no daemon of this host ever recorded one
	// SeenRev is the lastseen key's revision: a release guarded by it
	// fails if the host came back meanwhile.
	SeenRev int64
}

// Host states, as State reports them.
const (
	HostAlive   = "alive"   // the lease key exists
	HostStopped = "stopped" // no lease key; the daemon shut down cleanly
	HostDead    = "dead"    // no lease key; the daemon crashed or lost etcd
	HostUnknown = "unknown" // no liveness record at all
)

// State is one of HostAlive, HostStopped, HostDead, HostUnknown.
func (h *HostStatus) State() string {
	switch {
	case h.Live != nil:
		return HostAlive
	case h.LastSeen == nil:
		return HostUnknown
	case h.LastSeen.Stopped:
		return HostStopped
	}
	return HostDead
}

// KeeperConfig tunes a Keeper; zero values mean the defaults.
type KeeperConfig struct {
	TTL         time.Duration // lease TTL, whole seconds; DefaultLeaseTTL
	SeenEvery   time.Duration // lastseen period; DefaultSeenEvery
	CallTimeout time.Duration // bound on each etcd call; 5s
	Log         *slog.Logger  // nil: silent
}

// Keeper keeps a host's lease-bound key and its lastseen record in etcd
// for as long as it runs. It never gives up: while etcd is unreachable it
// retries, and when the lease is lost (etcd unreachable for longer than
// the TTL, the lease revoked, or the key deleted) it announces the host
// again with a new lease. Its failures are logged, never fatal: the daemon
// serves whether or not its liveness is recorded.
type Keeper struct {
	s      *Store
	rec    HostRecord
	cfg    KeeperConfig
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	lease   clientv3.LeaseID // 0: not announced
	stopped bool
}

// StartKeeper announces rec.Host and keeps it announced until Stop.
func (s *Store) StartKeeper(rec HostRecord, cfg KeeperConfig) *Keeper {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultLeaseTTL
	}
	cfg.TTL = max(cfg.TTL.Round(time.Second), time.Second)
	if cfg.SeenEvery <= 0 {
		cfg.SeenEvery = DefaultSeenEvery
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = defaultCallTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{s: s, rec: rec, cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go k.run(ctx)
	return k
}

// Lease is the current lease, 0 while the host is not announced.
func (k *Keeper) Lease() clientv3.LeaseID {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lease
}

func (k *Keeper) setLease(id clientv3.LeaseID) {
	k.mu.Lock()
	k.lease = id
	k.mu.Unlock()
}

// run refreshes the lease every TTL/3 (three chances before it expires)
// and lastseen every SeenEvery, and re-announces after losing the lease.
func (k *Keeper) run(ctx context.Context) {
	defer close(k.done)
	log := k.cfg.Log.With("host", k.rec.Host)
	var nextSeen time.Time
	failing := false
	for {
		var err error
		lease := k.Lease()
		switch {
		case lease == 0:
			err = k.announce(ctx, log)
			nextSeen = time.Now().Add(k.cfg.SeenEvery)
		case !time.Now().Before(nextSeen):
			if err = k.keepAlive(ctx, lease); err == nil {
				err = k.seen(ctx, lease, log)
			}
			if err == nil {
				nextSeen = time.Now().Add(k.cfg.SeenEvery)
			}
		default:
			err = k.keepAlive(ctx, lease)
		}
		if ctx.Err() != nil {
			return
		}
		wait := k.cfg.TTL / 3
		switch {
		case lease != 0 && errors.Is(err, rpctypes.ErrLeaseNotFound):
			log.Warn("liveness lease lost (etcd unreachable for longer than its TTL, or the lease was revoked); announcing the host again",
				"ttl", k.cfg.TTL)
			k.setLease(0)
			wait = 0
		case err != nil:
			if !failing {
				log.Warn("cannot record this host's liveness in etcd; retrying (the daemon keeps serving)", "err", err)
			}
			failing = true
			wait = min(wait, time.Second)
		case failing:
			log.Info("liveness recorded in etcd again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (k *Keeper) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.cfg.CallTimeout)
}

func (k *Keeper) lastSeenValue(stopped bool) string {
	b, _ := json.Marshal(LastSeen{Host: k.rec.Host, Seen: time.Now().UTC(), Since: k.rec.Since.UTC(), Stopped: stopped})
	return string(b)
}

// announce grants a lease and writes the host key with it, and lastseen,
// in one transaction.
func (k *Keeper) announce(ctx context.Context, log *slog.Logger) error {
	cctx, cancel := k.call(ctx)
	defer cancel()
	g, err := k.s.cli.Grant(cctx, int64(k.cfg.TTL/time.Second))
	if err != nil {
		return fmt.Errorf("granting a lease: %w", err)
	}
	// A lease whose transaction below fails expires by itself.
	rec, _ := json.Marshal(k.rec)
	key := k.s.k.host(k.rec.Host)
	r, err := k.s.cli.Txn(cctx).Then(
		clientv3.OpGet(key),
		clientv3.OpPut(key, string(rec), clientv3.WithLease(g.ID)),
		clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), k.lastSeenValue(false)),
	).Commit()
	if err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	k.warnIfOther(r.Responses[0].GetResponseRange().Kvs, log)
	k.setLease(g.ID)
	log.Info("host announced in etcd", "key", key, "lease", fmt.Sprintf("%x", int64(g.ID)), "ttl", k.cfg.TTL)
	return nil
}

// warnIfOther reports a host key written by a daemon on another machine:
// two daemons with one --host-id would release each other's addresses.
// (The same hostname is this daemon's predecessor, before its lease ran
// out.)
func (k *Keeper) warnIfOther(kvs []*mvccpb.KeyValue, log *slog.Logger) {
	if len(kvs) == 0 {
		return
	}
	var prev HostRecord
	if json.Unmarshal(kvs[0].Value, &prev) == nil && prev.Hostname != k.rec.Hostname {
		log.Warn("another machine announces the same host id: every host needs its own --host-id",
			"other", prev.Hostname, "pid", prev.PID, "since", prev.Since)
	}
}

func (k *Keeper) keepAlive(ctx context.Context, lease clientv3.LeaseID) error {
	cctx, cancel := k.call(ctx)
	defer cancel()
	_, err := k.s.cli.KeepAliveOnce(cctx, lease)
	return err
}

// seen rewrites lastseen and, in the same transaction, puts the host key
// back if it is missing or no longer bound to this lease.
func (k *Keeper) seen(ctx context.Context, lease clientv3.LeaseID, log *slog.Logger) error {
	cctx, cancel := k.call(ctx)
	defer cancel()
	key, seen := k.s.k.host(k.rec.Host), k.lastSeenValue(false)
	rec, _ := json.Marshal(k.rec)
	r, err := k.s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), seen)).
		Else(clientv3.OpGet(key),
			clientv3.OpPut(key, string(rec), clientv3.WithLease(lease)),
			clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), seen)).Commit()
	if err != nil {
		return err
	}
	if !r.Succeeded {
		k.warnIfOther(r.Responses[0].GetResponseRange().Kvs, log)
		log.Warn("liveness key was missing or replaced; written again", "key", key)
	}
	return nil
}

// Stop ends the keeper, records a clean shutdown in lastseen and revokes
// the lease, which deletes the host key at once. ctx bounds those calls;
// if they fail the key still disappears when the lease expires. Stopping
// again does nothing.
func (k *Keeper) Stop(ctx context.Context) error {
	k.cancel()
	<-k.done
	k.mu.Lock()
	again := k.stopped
	k.stopped = true
	k.mu.Unlock()
	if again {
		return nil
	}
	cctx, cancel := k.call(ctx)
	defer cancel()
	_, err := k.s.cli.Put(cctx, k.s.k.lastSeen(k.rec.Host), k.lastSeenValue(true))
	if err != nil {
		err = fmt.Errorf("recording shutdown in %s: %w", k.s.k.lastSeen(k.rec.Host), err)
	}
	if lease := k.Lease(); lease != 0 {
		if _, rerr := k.s.cli.Revoke(cctx, lease); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			err = errors.Join(err, fmt.Errorf("revoking liveness lease: %w", rerr))
		}
		k.setLease(0)
	}
	return err
}
