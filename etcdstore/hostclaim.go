package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Which daemon holds a host id. Two daemons with one id (cloned machines
// keep their hostname, the default id) would release each other's
// addresses, and each would show the host stopped when the other stops.
// So a daemon binds the host key to its lease only when the key is absent
// or held by a daemon of the same machine since the same boot (boot id):
// its predecessor after a restart, a kill -9 or a switch to the managed
// plugin, whose lease has not run out yet. Pids cannot tell that
// predecessor, the managed plugin has its own pid namespace; a clone has
// another boot id. A key of another machine stays that machine's for as
// long as its lease lives.

// HostTakenError is the host key held by a daemon of another machine (or
// of this one before a reboot) while its lease lives.
type HostTakenError struct {
	Other HostRecord
	lease clientv3.LeaseID // Other's, watched by outlast
}

func (e *HostTakenError) Error() string {
	o := e.Other
	return fmt.Sprintf("host id %q is held by the daemon on %q (pid %d, instance %q, running since %s) on another machine: every machine needs its own host id",
		o.Host, o.Hostname, o.PID, o.Instance, o.Since.UTC().Format(time.RFC3339))
}

// announceFirst announces the host at start. When another machine's
// daemon holds the key it waits to see whether that daemon runs (outlast),
// and takes the key if not.
func (k *Keeper) announceFirst(ctx context.Context) error {
	err := k.announce(ctx)
	var taken *HostTakenError
	if errors.As(err, &taken) {
		if err = k.outlast(ctx, taken); err == nil {
			err = k.announce(ctx)
		}
	}
	return err
}

// announce grants a lease and binds the host key to it (takeOver). The
// lease is kept even when another daemon holds the key: the keeper takes
// the key with it once that daemon's lease is gone.
func (k *Keeper) announce(ctx context.Context) error {
	cctx, cancel := k.call(ctx)
	g, err := k.s.cli.Grant(cctx, int64(k.cfg.TTL/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("granting a lease: %w", err)
	}
	// A lease the key is never bound to expires by itself.
	k.setLease(g.ID)
	prev, err := k.takeOver(ctx, g.ID, nil)
	if err != nil {
		return err
	}
	log := k.log.With("key", k.s.k.host(k.rec.Host), "lease", fmt.Sprintf("%x", int64(g.ID)), "ttl", k.cfg.TTL, "instance", k.rec.Instance)
	if prev != nil {
		log = log.With("predecessor", prev.Instance, "predecessorPid", prev.PID)
	}
	log.Info("host announced in etcd")
	return nil
}

// hold rewrites lastseen while the host key is bound to lease, and else
// takes the key over, from the key read in the same transaction.
func (k *Keeper) hold(ctx context.Context, lease clientv3.LeaseID) error {
	key := k.s.k.host(k.rec.Host)
	cctx, cancel := k.call(ctx)
	r, err := k.s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), k.lastSeenValue(false))).
		Else(clientv3.OpGet(key)).Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("writing %s: %w", k.s.k.lastSeen(k.rec.Host), err)
	}
	if r.Succeeded {
		return nil
	}
	prev, err := k.takeOver(ctx, lease, r.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return err
	}
	if prev == nil {
		k.log.Warn("liveness key was missing; written again", "key", key)
	} else {
		k.log.Warn("another daemon on this machine wrote the liveness key: two daemons run with this host id; written again",
			"key", key, "other", prev.Instance, "pid", prev.PID, "since", prev.Since)
	}
	return nil
}

// takeOverAttempts bounds takeOver: each further attempt means another
// daemon wrote the key in between.
const takeOverAttempts = 3

// takeOver binds the host key to lease and rewrites lastseen, if the key
// is absent or held by a daemon of this machine, whose record it returns
// as prev. kvs is the key as last read, empty for absent: the transaction
// checks it is unchanged and reads it again if not. A key of another
// machine's daemon is a *HostTakenError.
func (k *Keeper) takeOver(ctx context.Context, lease clientv3.LeaseID, kvs []*mvccpb.KeyValue) (prev *HostRecord, err error) {
	key := k.s.k.host(k.rec.Host)
	rec, _ := json.Marshal(k.rec)
	for range takeOverAttempts {
		var rev int64
		prev = nil
		if len(kvs) > 0 {
			if prev, err = k.holder(kvs[0]); err != nil {
				return nil, err
			}
			rev = kvs[0].ModRevision
		}
		cctx, cancel := k.call(ctx)
		r, err := k.s.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(rec), clientv3.WithLease(lease)),
				clientv3.OpPut(k.s.k.lastSeen(k.rec.Host), k.lastSeenValue(false))).
			Else(clientv3.OpGet(key)).Commit()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("writing %s: %w", key, err)
		}
		if r.Succeeded {
			return prev, nil
		}
		kvs = r.Responses[0].GetResponseRange().Kvs
	}
	return nil, fmt.Errorf("writing %s: other daemons changed it %d times meanwhile", key, takeOverAttempts)
}

// holder is the record of the daemon holding the host key kv if it runs
// on this machine since this boot, else a *HostTakenError.
func (k *Keeper) holder(kv *mvccpb.KeyValue) (*HostRecord, error) {
	var prev HostRecord
	if err := json.Unmarshal(kv.Value, &prev); err != nil {
		return nil, fmt.Errorf("malformed host record at %s: %w", kv.Key, err)
	}
	if prev.BootID == "" || prev.BootID != k.rec.BootID {
		return nil, &HostTakenError{Other: prev, lease: clientv3.LeaseID(kv.Lease)}
	}
	return &prev, nil
}

// outlastMargin is how long after its TTL a lease may still show: etcd
// revokes an expired lease on a timer (every 500ms) through raft.
const outlastMargin = 3 * time.Second

// renewedBy: etcd reports a lease's TTL in whole seconds, so its expiry
// read twice may differ by a second (and the calls' jitter) without a
// renewal in between.
const renewedBy = 2 * time.Second

// outlast tells whether the other machine's daemon in taken runs, by its
// lease: a running daemon renews it (this keeper every TTL/3), so its
// expiry moves on; that of one that died (its machine gone or cut off)
// runs out, and etcd deletes its key. It watches until the expiry first
// read and outlastMargin, and returns taken if the daemon runs, nil once
// its key is gone.
func (k *Keeper) outlast(ctx context.Context, taken *HostTakenError) error {
	k.log.Info("another machine's daemon holds this host id; watching its lease to see whether it runs",
		"other", taken.Other.Hostname, "pid", taken.Other.PID, "instance", taken.Other.Instance)
	key := k.s.k.host(k.rec.Host)
	var first time.Time // the lease's expiry as first read
	for {
		cctx, cancel := k.call(ctx)
		r, err := k.s.cli.TimeToLive(cctx, taken.lease)
		var g *clientv3.GetResponse
		if err == nil {
			g, err = k.s.cli.Get(cctx, key)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("watching the lease of the daemon holding %s: %w", key, err)
		}
		if len(g.Kvs) == 0 || clientv3.LeaseID(g.Kvs[0].Lease) != taken.lease {
			return nil // expired or revoked, or re-announced: announce decides
		}
		expires := time.Now().Add(time.Duration(r.TTL) * time.Second)
		switch {
		case first.IsZero():
			first = expires
		case expires.After(first.Add(renewedBy)):
			return taken
		case time.Now().After(first.Add(outlastMargin)):
			// Neither renewed nor deleted in time, which only a stuck
			// etcd explains: take the daemon for running, the safe side.
			return taken
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
