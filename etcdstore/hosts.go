package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Host liveness, and the consistent view `ipamctl gc` works from.
//
//	hosts/<host>     {"host","since","hostname","pid","instance","bootId"}:
//	                 bound to a lease the daemon keeps alive; gone within the
//	                 TTL once the daemon stops, crashes or loses etcd
//	lastseen/<host>  {"host","seen","since","instance","stopped","namelessSticky"}:
//	                 no lease; rewritten every SeenEvery and at shutdown, so a
//	                 dead host's age is known after its lease key is gone
//
// The lease key answers "is the daemon running now" with etcd's own clock
// (the TTL runs on the server); lastseen answers "for how long not", with
// the daemon's clock. One daemon holds a host id at a time (see
// hostclaim.go): a second one on another machine is refused at start.

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
	// Instance is random per daemon start: it tells two daemons of one
	// host id apart where hostname and pid do not (a cloned machine, a
	// plugin in its own pid namespace).
	Instance string `json:"instance,omitempty"`
	// BootID is the kernel's boot id of the daemon's machine. A daemon with
	// the same one is on the same machine since the same boot, so the
	// key's holder is its predecessor and taken over at once; empty (not
	// known) never matches.
	BootID string `json:"bootId,omitempty"`
}

// LastSeen is the value of a host's lastseen key.
type LastSeen struct {
	Host  string    `json:"host"`
	Seen  time.Time `json:"seen"`
	Since time.Time `json:"since"` // when the daemon that wrote it started
	// Instance is the HostRecord.Instance of the daemon that wrote it.
	Instance string `json:"instance,omitempty"`
	// Stopped is set by a clean shutdown; a crash leaves it false.
	Stopped bool `json:"stopped,omitempty"`
	// NamelessSticky are the subnets of the host's sticky networks whose
	// dockerd sends no endpoint names (before Docker 29), as the daemon
	// knew at Seen: their containers get ordinary addresses. Here, not
	// only in the daemon's log, so that ipamctl status shows it on any host.
	NamelessSticky []string `json:"namelessSticky,omitempty"`
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
	// NamelessSticky gives LastSeen.NamelessSticky each time lastseen is
	// written; nil: none.
	NamelessSticky func() []string
}

// Keeper keeps a host's lease-bound key and its lastseen record in etcd
// for as long as it runs. It never gives up: while etcd is unreachable it
// retries, and when the lease is lost (etcd unreachable for longer than
// the TTL, the lease revoked, or the key deleted) it announces the host
// again with a new lease. Its failures are logged, never fatal: the daemon
// serves whether or not its liveness is recorded. It never takes the key
// from a live daemon of another machine (HostTakenError): it logs that
// daemon and waits for its key to go.
type Keeper struct {
	s      *Store
	rec    HostRecord
	cfg    KeeperConfig
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	lease   clientv3.LeaseID // 0: not announced
	stopped bool
}

// StartKeeper announces rec.Host and keeps it announced until Stop. The
// first announcement happens before it returns, and ctx bounds it: if
// another machine's daemon holds the host id, StartKeeper waits for that
// daemon's lease to show whether it runs, and returns a *HostTakenError
// if it does. Other failures (etcd unreachable) are left to the keeper to
// retry; StartKeeper returns an error only for a taken host or an ended
// ctx.
func (s *Store) StartKeeper(ctx context.Context, rec HostRecord, cfg KeeperConfig) (*Keeper, error) {
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
	k := &Keeper{s: s, rec: rec, cfg: cfg, log: cfg.Log.With("host", rec.Host), done: make(chan struct{})}
	err := k.announceFirst(ctx)
	var taken *HostTakenError
	if err != nil && (errors.As(err, &taken) || ctx.Err() != nil) {
		return nil, err
	}
	run, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	go k.run(run, err)
	return k, nil
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
// err is the first announcement's outcome.
func (k *Keeper) run(ctx context.Context, err error) {
	defer close(k.done)
	var nextSeen time.Time // due: the key is not held yet after a failed start
	if err == nil {
		nextSeen = time.Now().Add(k.cfg.SeenEvery)
	}
	failing := false
	reported := "" // the HostTakenError last logged
	lease := k.Lease()
	for {
		wait := k.cfg.TTL / 3
		var taken *HostTakenError
		switch {
		case lease != 0 && errors.Is(err, rpctypes.ErrLeaseNotFound):
			k.log.Warn("liveness lease lost (etcd unreachable for longer than its TTL, or the lease was revoked); announcing the host again",
				"ttl", k.cfg.TTL)
			k.setLease(0)
			wait = 0
		case errors.As(err, &taken):
			// Taking the key would only make the two daemons take it from
			// each other; it is checked again every TTL/3 and taken once
			// the other's lease has gone.
			if err.Error() != reported {
				k.log.Error("another machine's daemon holds this host id: the two release each other's addresses until one machine gets its own --host-id; this daemon takes the id once the other's lease is gone",
					"err", err)
				reported = err.Error()
			}
		case err != nil:
			if !failing {
				k.log.Warn("cannot record this host's liveness in etcd; retrying (the daemon keeps serving)", "err", err)
			}
			failing = true
			wait = min(wait, time.Second)
		case failing || reported != "":
			k.log.Info("liveness recorded in etcd again")
			failing, reported = false, ""
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		lease = k.Lease()
		due := lease == 0 || !time.Now().Before(nextSeen)
		switch {
		case lease == 0:
			err = k.announce(ctx)
		case due:
			if err = k.keepAlive(ctx, lease); err == nil {
				err = k.hold(ctx, lease)
			}
		default:
			err = k.keepAlive(ctx, lease)
		}
		// A round that did not hold the key (etcd down, a key another
		// daemon holds) leaves hold due, so the next round tries again.
		if err == nil && due {
			nextSeen = time.Now().Add(k.cfg.SeenEvery)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func (k *Keeper) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.cfg.CallTimeout)
}

func (k *Keeper) lastSeenValue(stopped bool) string {
	seen := LastSeen{Host: k.rec.Host, Seen: time.Now().UTC(), Since: k.rec.Since.UTC(), Instance: k.rec.Instance, Stopped: stopped}
	if k.cfg.NamelessSticky != nil {
		seen.NamelessSticky = k.cfg.NamelessSticky()
	}
	b, _ := json.Marshal(seen)
	return string(b)
}

func (k *Keeper) keepAlive(ctx context.Context, lease clientv3.LeaseID) error {
	cctx, cancel := k.call(ctx)
	defer cancel()
	_, err := k.s.cli.KeepAliveOnce(cctx, lease)
	return err
}

// Stop ends the keeper and, if the host key is still its own, records a
// clean shutdown in lastseen and deletes the key, in one transaction; then
// it revokes the lease. A key another daemon holds is left alone, so that
// daemon's host does not show as stopped; so is everything while the
// keeper holds no lease (never announced, or between losing one and the
// next). ctx bounds those calls; if they fail the key still disappears
// when the lease expires. Stopping again does nothing.
func (k *Keeper) Stop(ctx context.Context) error {
	k.cancel()
	<-k.done
	k.mu.Lock()
	again := k.stopped
	k.stopped = true
	k.mu.Unlock()
	lease := k.Lease()
	if again || lease == 0 {
		return nil
	}
	cctx, cancel := k.call(ctx)
	defer cancel()
	key := k.s.k.host(k.rec.Host)
	r, err := k.s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), k.lastSeenValue(true)), clientv3.OpDelete(key)).
		Commit()
	switch {
	case err != nil:
		err = fmt.Errorf("recording shutdown in %s: %w", k.s.k.lastSeen(k.rec.Host), err)
	case !r.Succeeded:
		k.log.Info("the host key is not this daemon's; left alone, and not marked stopped", "key", key)
	}
	if _, rerr := k.s.cli.Revoke(cctx, lease); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
		err = errors.Join(err, fmt.Errorf("revoking liveness lease: %w", rerr))
	}
	k.setLease(0)
	return err
}
