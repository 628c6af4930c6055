// Package releasequeue keeps the releases etcd refused for want of space
// (its NOSPACE alarm) in a file, and applies them once it has room again.
// dockerd takes a failed release as final, so without it the address would
// stay used until `ipamctl gc`.
package releasequeue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// FileName is the queue's file in the daemon's --data-dir.
const FileName = "pending-releases.json"

// Pacing of the attempts while etcd is out of space: an operator's
// recovery takes minutes, and an attempt that is refused costs etcd one
// round trip.
const (
	minDelay = time.Second
	maxDelay = 30 * time.Second
)

// Releaser applies a kept release: pool.(*Pools).ReleasePending.
type Releaser interface {
	ReleasePending(ctx context.Context, r pool.Pending) (released bool, err error)
}

// Queue is the kept releases, in the order they were refused.
type Queue struct {
	path    string
	pools   Releaser
	timeout time.Duration // bounds each attempt
	log     *slog.Logger
	added   chan struct{} // wakes Run when the queue was empty

	mu    sync.Mutex // guards items and the file
	items []*pool.Pending
}

// Open reads the queue kept in dir, if any: releases a previous run of the
// daemon could not apply. The file and dir are made on the first Add.
func Open(dir string, pools Releaser, timeout time.Duration, log *slog.Logger) (*Queue, error) {
	q := &Queue{path: filepath.Join(dir, FileName), pools: pools, timeout: timeout, log: log, added: make(chan struct{}, 1)}
	b, err := os.ReadFile(q.path)
	if errors.Is(err, os.ErrNotExist) {
		return q, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the releases kept for when etcd has room: %w", err)
	}
	if err := json.Unmarshal(b, &q.items); err != nil {
		return nil, fmt.Errorf("reading the releases kept for when etcd has room: %s: %w", q.path, err)
	}
	if len(q.items) > 0 {
		log.Warn("releases etcd refused for want of space before a restart are kept; applying them once it has room", "queued", len(q.items), "file", q.path)
	}
	return q, nil
}

// Len is how many releases are kept.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Add keeps r, durably once it returns: ipam.Driver answers dockerd's
// release with success only then.
func (q *Queue) Add(r pool.Pending) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = append(q.items, &r)
	if err := q.save(); err != nil {
		q.items = q.items[:len(q.items)-1]
		return err
	}
	select {
	case q.added <- struct{}{}:
	default:
	}
	return nil
}

// Run applies the kept releases until ctx ends: a second after the first
// is added, then with a backoff doubling to 30s while etcd is out of space.
func (q *Queue) Run(ctx context.Context) {
	delay := minDelay
	for {
		if q.Len() == 0 {
			delay = minDelay
			select {
			case <-ctx.Done():
				return
			case <-q.added:
			}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if full := q.pass(ctx); full {
			delay = min(2*delay, maxDelay)
		} else {
			delay = minDelay
		}
	}
}

// pass tries each kept release once, in order, and reports whether etcd
// is still out of space: then it stops, as the rest would be refused too.
func (q *Queue) pass(ctx context.Context) (full bool) {
	q.mu.Lock()
	items := slices.Clone(q.items)
	q.mu.Unlock()
	for _, r := range items {
		if ctx.Err() != nil {
			return false
		}
		if q.apply(ctx, r) {
			return true
		}
	}
	return false
}

// apply tries r, and keeps it only if etcd refused it for want of space
// again (then it reports full), or if its outcome is unknown and trying it
// again is safe.
//
// A container release is safe to repeat: it changes that very record or
// nothing. A shared address's release decrements a holder count, so it is
// applied at most once: dropped from the file before it is tried, and kept
// again only when refused, which commits nothing. A daemon that dies in
// between leaves one reference behind (`ipamctl check` names it) rather
// than dropping another network's.
func (q *Queue) apply(ctx context.Context, r *pool.Pending) (full bool) {
	once := r.Record.Kind != pool.KindContainer
	log := q.log.With("pool", r.Subnet, "address", r.Addr, "record", r.Record.Describe())
	if once {
		if err := q.remove(r); err != nil {
			log.Error("cannot update the kept releases; trying later", "err", err)
			return true
		}
	}
	actx, cancel := context.WithTimeout(ctx, q.timeout)
	released, err := q.pools.ReleasePending(actx, *r)
	cancel()
	keep := false
	switch {
	case errors.Is(err, pool.ErrNoSpace):
		full, keep = true, true
	case err != nil && !once && (errors.Is(err, pool.ErrTransient) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil):
		keep = true
		log.Warn("no answer from etcd to a kept release; trying it again later", "err", err)
	case err != nil:
		log.Warn("a kept release failed and is dropped; see ipamctl check", "err", err)
	case released:
		log.Info("kept release applied: etcd has room again")
	default:
		log.Info("kept release dropped: the address no longer holds that record")
	}
	switch {
	case keep && once:
		if err := q.Add(*r); err != nil {
			log.Error("cannot keep a release etcd refused for want of space; the address stays used until ipamctl gc", "err", err)
		}
	case !keep && !once:
		if err := q.remove(r); err != nil {
			log.Error("cannot update the kept releases; the release will be tried again, which is safe", "err", err)
		}
	}
	return full
}

// remove drops r from the queue and its file.
func (q *Queue) remove(r *pool.Pending) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.Index(q.items, r)
	if i < 0 {
		return nil
	}
	q.items = slices.Delete(q.items, i, i+1)
	if err := q.save(); err != nil {
		q.items = slices.Insert(q.items, i, r)
		return err
	}
	return nil
}

// save writes the queue to its file so that a crash leaves the old file or
// the new one, never a mix: a temporary file, synced, renamed over it, and
// the directory synced so the rename itself survives a power cut.
func (q *Queue) save() error {
	b, err := json.Marshal(q.items)
	if err != nil {
		return err
	}
	dir := filepath.Dir(q.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keeping a release for when etcd has room: %w", err)
	}
	tmp, err := os.CreateTemp(dir, FileName+".*")
	if err != nil {
		return fmt.Errorf("keeping a release for when etcd has room: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), q.path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("keeping a release for when etcd has room: writing %s: %w", q.path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
