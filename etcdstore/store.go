// Package etcdstore keeps pools in etcd. It is the only package that talks
// to etcd; every state change is one transaction guarded by a compare.
package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

var _ pool.Store = (*Store)(nil)

// DefaultPrefix is where pools live unless configured otherwise.
const DefaultPrefix = "/talkingdata/ipam"

// maxAttempts bounds the compare-and-swap loops here; every lost race
// means another writer made progress.
const maxAttempts = 32

// Store implements pool.Store on etcd.
type Store struct {
	cli    *clientv3.Client
	k      keys
	batch  *batcher
	views  views
	delays delayLeases
	refs   refWriters
	avoid  avoidance
}

// New uses cli with keys under prefix.
func New(cli *clientv3.Client, prefix string) *Store {
	s := &Store{cli: cli, k: keys{prefix: strings.TrimSuffix(prefix, "/") + "/"}, avoid: avoidance{all: cli.Endpoints()}}
	s.batch = &batcher{kv: cli, timedOut: s.timedOut, linger: defaultLinger}
	return s
}

// metaValue is the stored form of pool.Meta.
type metaValue struct {
	Subnet  string `json:"subnet"`
	Ranges  string `json:"ranges"`
	Seeding bool   `json:"seeding,omitempty"`
	// ReuseDelay is a Go duration ("1m0s"); pools recorded before it
	// existed have none and get pool.DefaultReuseDelay.
	ReuseDelay string `json:"reuseDelay,omitempty"`
	// StickyTTL likewise; pools without one get pool.DefaultStickyTTL.
	StickyTTL string    `json:"stickyTTL,omitempty"`
	CreatedBy string    `json:"createdBy"`
	Created   time.Time `json:"created"`
}

func encodeMeta(m pool.Meta) string {
	b, _ := json.Marshal(metaValue{Subnet: m.Subnet.String(), Ranges: pool.FormatRanges(m.Ranges),
		Seeding: m.Seeding, ReuseDelay: m.ReuseDelay.String(), StickyTTL: m.StickyTTL.String(), CreatedBy: m.CreatedBy, Created: m.Created})
	return string(b)
}

func decodeMeta(key string, value []byte, rev int64) (pool.Meta, error) {
	var v metaValue
	if err := json.Unmarshal(value, &v); err != nil {
		return pool.Meta{}, fmt.Errorf("malformed pool description at %s: %w", key, err)
	}
	subnet, err := netip.ParsePrefix(v.Subnet)
	if err != nil {
		return pool.Meta{}, fmt.Errorf("malformed subnet in %s: %w", key, err)
	}
	ranges, err := pool.ParseRanges(v.Ranges)
	if err != nil {
		return pool.Meta{}, fmt.Errorf("malformed ranges in %s: %w", key, err)
	}
	delay, err := durationOr(v.ReuseDelay, pool.DefaultReuseDelay)
	if err != nil {
		return pool.Meta{}, fmt.Errorf("malformed reuse delay in %s: %w", key, err)
	}
	ttl, err := durationOr(v.StickyTTL, pool.DefaultStickyTTL)
	if err != nil {
		return pool.Meta{}, fmt.Errorf("malformed sticky TTL in %s: %w", key, err)
	}
	return pool.Meta{Subnet: subnet, Ranges: ranges, Seeding: v.Seeding, ReuseDelay: delay, StickyTTL: ttl, CreatedBy: v.CreatedBy, Created: v.Created, Rev: rev}, nil
}

// durationOr parses s, a Go duration, or gives def for "".
func durationOr(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	return time.ParseDuration(s)
}

// metaFrom decodes the first of kvs; ok is false if there is none.
func metaFrom(kvs []*mvccpb.KeyValue) (pool.Meta, bool, error) {
	if len(kvs) == 0 {
		return pool.Meta{}, false, nil
	}
	kv := kvs[0]
	m, err := decodeMeta(string(kv.Key), kv.Value, kv.ModRevision)
	return m, err == nil, err
}

func decodeAllocation(key string, value []byte) (*pool.Allocation, error) {
	var a pool.Allocation
	if err := json.Unmarshal(value, &a); err != nil {
		return nil, fmt.Errorf("malformed allocation at %s: %w", key, err)
	}
	return &a, nil
}

func (s *Store) Meta(ctx context.Context, subnet netip.Prefix) (pool.Meta, bool, error) {
	r, err := s.get(ctx, s.k.meta(subnet))
	if err != nil {
		return pool.Meta{}, false, err
	}
	return metaFrom(r.Kvs)
}

// CreateMeta checks the new subnet against every pool, then creates it
// with a compare that no pool was created since that read: two hosts
// creating overlapping pools at once cannot both succeed.
func (s *Store) CreateMeta(ctx context.Context, m pool.Meta) (pool.Meta, bool, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pools, rev, err := s.pools(ctx)
		if err != nil {
			return pool.Meta{}, false, err
		}
		for _, other := range pools {
			if other.Subnet == m.Subnet {
				return other, false, nil
			}
			if other.Subnet.Overlaps(m.Subnet) {
				return pool.Meta{}, false, fmt.Errorf("%w: %s overlaps %s", pool.ErrOverlap, m.Subnet, other.Subnet)
			}
		}
		r, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.k.metaDir()), "<", rev+1).WithPrefix()},
			[]clientv3.Op{clientv3.OpPut(s.k.meta(m.Subnet), encodeMeta(m))}, nil)
		if err != nil {
			return pool.Meta{}, false, err
		}
		if r.Succeeded {
			m.Rev = r.Header.Revision
			return m, true, nil
		}
	}
	return pool.Meta{}, false, pool.ErrContention
}

func (s *Store) UpdateMeta(ctx context.Context, old, next pool.Meta) (pool.Meta, bool, error) {
	key := s.k.meta(old.Subnet)
	r, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", old.Rev)).
		Then(clientv3.OpPut(key, encodeMeta(next))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return pool.Meta{}, false, err
	}
	if r.Succeeded {
		next.Rev = r.Header.Revision
		return next, true, nil
	}
	cur, ok, err := metaFrom(r.Responses[0].GetResponseRange().Kvs)
	if err == nil && !ok {
		err = fmt.Errorf("%w: %s (removed meanwhile)", pool.ErrUnknownPool, old.Subnet)
	}
	return cur, false, err
}

// The else branch of a claim reads, in this order:
const (
	claimHolder = iota // the used record
	claimMeta          // whether the pool exists
	claimFree          // whether the address is free
	claimDelay         // whether it is in its reuse delay
	claimOwner         // the endpoint's existing address, if indexed
)

func (s *Store) Claim(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a pool.Allocation, takeDelayed bool) (pool.Claim, error) {
	free, used, meta, owner, delay := s.k.free(subnet, addr), s.k.used(subnet, addr), s.k.meta(subnet), s.k.owner(subnet, &a), s.k.delay(subnet, addr)
	value, err := json.Marshal(a)
	if err != nil {
		return pool.Claim{}, err
	}
	// The pool must still exist: free keys written by a seeding that
	// raced with `ipamctl pool rm` must not be handed out. The endpoint
	// must not hold an address yet: then this is a retry, answered from
	// the Else.
	t := subTxn{
		cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(free), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(used), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(meta), ">", 0),
		},
		// The meta read tells the caller which pool version the claim
		// saw, so that the release can compare-and-swap without a read.
		then: []clientv3.Op{clientv3.OpDelete(free), clientv3.OpPut(used, string(value)), clientv3.OpGet(meta, clientv3.WithKeysOnly())},
		orElse: []clientv3.Op{clientv3.OpGet(used), clientv3.OpGet(meta, clientv3.WithCountOnly()),
			clientv3.OpGet(free, clientv3.WithCountOnly()), clientv3.OpGet(delay, clientv3.WithCountOnly())},
		writes: []string{free, used},
	}
	const thenMeta = 2
	if takeDelayed {
		// Its delay ends with the claim, so that it cannot hold back the
		// address's next release.
		t.then = append(t.then, clientv3.OpDelete(delay))
		t.writes = append(t.writes, delay)
	} else {
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(delay), "=", 0))
	}
	if owner != "" {
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(owner), "=", 0))
		t.then = append(t.then, clientv3.OpPut(owner, addr.String()))
		t.orElse = append(t.orElse, clientv3.OpGet(owner))
		t.writes = append(t.writes, owner)
	}
	binding, bindingAt := s.k.binding(subnet, &a), len(t.orElse)
	if binding != "" {
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(binding), "=", 0))
		t.then = append(t.then, clientv3.OpPut(binding, addr.String()))
		t.orElse = append(t.orElse, clientv3.OpGet(binding))
		t.writes = append(t.writes, binding)
	}
	r, rev, err := s.batch.do(ctx, t)
	if err != nil {
		return pool.Claim{}, err
	}
	if r.Succeeded {
		return pool.Claim{Taken: true, Version: pool.Version{Used: rev, Meta: r.Responses[thenMeta].GetResponseRange().Kvs[0].ModRevision}}, nil
	}
	var c pool.Claim
	if kvs := r.Responses[claimHolder].GetResponseRange().Kvs; len(kvs) > 0 {
		if c.Holder, err = decodeAllocation(used, kvs[0].Value); err != nil {
			return c, err
		}
	}
	c.NoPool = r.Responses[claimMeta].GetResponseRange().Count == 0
	c.Delayed = !takeDelayed && r.Responses[claimFree].GetResponseRange().Count > 0 && r.Responses[claimDelay].GetResponseRange().Count > 0
	if owner != "" {
		if c.Existing, _, err = addrValue(r.Responses[claimOwner].GetResponseRange().Kvs); err != nil {
			return c, err
		}
	}
	if binding != "" {
		if c.Bound, _, err = addrValue(r.Responses[bindingAt].GetResponseRange().Kvs); err != nil {
			return c, err
		}
	}
	return c, nil
}

// addrValue decodes an owner-index or sticky-binding key, the first of
// kvs, whose value is an address; ok is false when there is none.
func addrValue(kvs []*mvccpb.KeyValue) (a netip.Addr, ok bool, err error) {
	kv := first(kvs)
	if kv == nil {
		return netip.Addr{}, false, nil
	}
	if a, err = netip.ParseAddr(string(kv.Value)); err != nil {
		return netip.Addr{}, false, fmt.Errorf("malformed address at %s: %w", kv.Key, err)
	}
	return a, true, nil
}

// lookupAddr reads an address-valued key.
func (s *Store) lookupAddr(ctx context.Context, key string) (netip.Addr, bool, error) {
	r, err := s.get(ctx, key)
	if err != nil {
		return netip.Addr{}, false, err
	}
	return addrValue(r.Kvs)
}

// Binding returns the address name is bound to in the pool, if any.
func (s *Store) Binding(ctx context.Context, subnet netip.Prefix, name string) (netip.Addr, bool, error) {
	return s.lookupAddr(ctx, s.k.binding(subnet, &pool.Allocation{Sticky: name}))
}

// Owned returns the address the endpoint owner (pool.Allocation.Owner)
// holds in the pool, if any.
func (s *Store) Owned(ctx context.Context, subnet netip.Prefix, owner string) (netip.Addr, bool, error) {
	return s.lookupAddr(ctx, s.k.ownersDir(subnet)+owner)
}

// entryReads is how many reads entryOps makes; what a transaction's Else
// reads after them comes at this position on.
const entryReads = 3

// entryOps read everything an Entry holds, in one round trip.
func (s *Store) entryOps(subnet netip.Prefix, addr netip.Addr) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpGet(s.k.free(subnet, addr), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.used(subnet, addr)),
		clientv3.OpGet(s.k.meta(subnet)),
	}
}

func entryFrom(addr netip.Addr, rs []*pb.ResponseOp) (pool.Entry, error) {
	e := pool.Entry{Addr: addr}
	if kvs := rs[0].GetResponseRange().Kvs; len(kvs) > 0 {
		e.Free, e.Version.Free = true, kvs[0].ModRevision
	}
	if kvs := rs[1].GetResponseRange().Kvs; len(kvs) > 0 {
		a, err := decodeAllocation(string(kvs[0].Key), kvs[0].Value)
		if err != nil {
			return e, err
		}
		e.Used, e.Version.Used = a, kvs[0].ModRevision
	}
	m, ok, err := metaFrom(rs[2].GetResponseRange().Kvs)
	if ok {
		e.Ranges, e.ReuseDelay, e.Version.Meta = m.Ranges, m.ReuseDelay, m.Rev
	}
	return e, err
}

func (s *Store) Entry(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (pool.Entry, error) {
	r, err := s.txn(ctx, nil, s.entryOps(subnet, addr), nil)
	if err != nil {
		return pool.Entry{}, err
	}
	return entryFrom(addr, r.Responses)
}

// guard is etcdstore's pool.Guard: compares added to a Swap.
type guard []clientv3.Cmp

func (s *Store) Swap(ctx context.Context, subnet netip.Prefix, cur pool.Entry, next pool.State, guards ...pool.Guard) (pool.Entry, bool, error) {
	free, used, meta, delay := s.k.free(subnet, cur.Addr), s.k.used(subnet, cur.Addr), s.k.meta(subnet), s.k.delay(subnet, cur.Addr)
	var ops []clientv3.Op
	writes := []string{free, used}
	var lease clientv3.LeaseID
	switch {
	case next.Free && !cur.Free:
		ops = append(ops, clientv3.OpPut(free, ""))
		if next.Delay > 0 {
			var err error
			if lease, err = s.delayLease(ctx, next.Delay); err != nil {
				return pool.Entry{}, false, err
			}
			ops = append(ops, clientv3.OpPut(delay, "", clientv3.WithLease(lease)))
			writes = append(writes, delay)
		}
	case !next.Free && cur.Free:
		ops = append(ops, clientv3.OpDelete(free), clientv3.OpDelete(delay))
		writes = append(writes, delay)
	}
	switch {
	case next.Used != nil:
		value, err := json.Marshal(next.Used)
		if err != nil {
			return pool.Entry{}, false, err
		}
		ops = append(ops, clientv3.OpPut(used, string(value)))
	case cur.Used != nil:
		ops = append(ops, clientv3.OpDelete(used))
	}
	t := subTxn{
		cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(free), "=", cur.Version.Free),
			clientv3.Compare(clientv3.ModRevision(used), "=", cur.Version.Used),
			clientv3.Compare(clientv3.ModRevision(meta), "=", cur.Version.Meta)},
		orElse: s.entryOps(subnet, cur.Addr),
		writes: writes,
	}
	for _, g := range guards {
		t.cmps = append(t.cmps, g.(guard)...)
	}
	// A sticky binding follows the record that carries its name.
	if was, now := s.k.binding(subnet, cur.Used), s.k.binding(subnet, next.Used); was != now {
		if was != "" {
			ops = append(ops, clientv3.OpDelete(was))
			t.writes = append(t.writes, was)
		}
		if now != "" {
			ops = append(ops, clientv3.OpPut(now, cur.Addr.String()))
			t.writes = append(t.writes, now)
		}
	}
	// The owner index follows the used record in the same transaction. An
	// endpoint that becomes the holder (taking a reservation) must hold
	// nothing else in the pool, as in Claim.
	owner := ""
	if was, now := s.k.owner(subnet, cur.Used), s.k.owner(subnet, next.Used); was != now {
		if was != "" {
			ops = append(ops, clientv3.OpDelete(was))
			t.writes = append(t.writes, was)
		}
		if now != "" {
			owner = now
			ops = append(ops, clientv3.OpPut(now, cur.Addr.String()))
			t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(now), "=", 0))
			t.orElse = append(t.orElse, clientv3.OpGet(now))
			t.writes = append(t.writes, now)
		}
	}
	t.then = ops
	r, _, err := s.batch.do(ctx, t)
	if err != nil {
		if lease != 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.forgetDelayLease(lease)
		}
		return pool.Entry{}, false, err
	}
	if r.Succeeded {
		if next.Free && !cur.Free && next.Delay == 0 {
			// Free at once: this process's next claim need not wait for
			// its watch to say so (a full range). Applying the watch's
			// event again later changes nothing.
			if set := s.loadedSet(subnet); set != nil {
				set.Add(cur.Addr)
			}
		}
		return pool.Entry{}, true, nil
	}
	fresh, err := entryFrom(cur.Addr, r.Responses)
	if err != nil || fresh.Version != cur.Version {
		return fresh, false, err
	}
	// The entry is unchanged: the owner compare or a guard failed.
	if owner != "" {
		if kvs := r.Responses[entryReads].GetResponseRange().Kvs; len(kvs) > 0 { // the owner key, after the entry
			return fresh, false, fmt.Errorf("%w: the endpoint (%s) already holds %s in pool %s",
				pool.ErrUnavailable, next.Used.Describe(), kvs[0].Value, subnet)
		}
	}
	if len(guards) > 0 {
		return fresh, false, pool.ErrGuard
	}
	return fresh, false, nil
}

// AddRef applies delta with a compare on the key's revision, retrying
// lost races. Only this process writes its host's refs/ keys, and it does so
// one call at a time per key (refs.lock), so after an error whose outcome
// is unknown, the next call for the key can tell: the key's revision moves
// if and only if that call commits, at once or late, while its twin with
// the same compare waits. A retry of the same op that sees it move is done.
func (s *Store) AddRef(ctx context.Context, subnet netip.Prefix, host string, delta int, op string) (int, error) {
	key, meta := s.k.ref(subnet, host), s.k.meta(subnet)
	unlock := s.refs.lock(key)
	defer unlock()
	r, err := s.get(ctx, key)
	if err != nil {
		return 0, err
	}
	u, unknown := s.refs.takeUnknown(key)
	retry := unknown && u.op == op
	if retry && keyRev(r.Kvs) != u.rev {
		return refCount(first(r.Kvs))
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		n, err := refCount(first(r.Kvs))
		if err != nil {
			return 0, err
		}
		rev := keyRev(r.Kvs)
		n = max(n+delta, 0)
		put := clientv3.OpPut(key, strconv.Itoa(n))
		if n == 0 {
			put = clientv3.OpDelete(key)
		}
		t, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev), clientv3.Compare(clientv3.CreateRevision(meta), ">", 0)},
			[]clientv3.Op{put}, []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(meta, clientv3.WithCountOnly())})
		if err != nil {
			s.refs.setUnknown(key, refUnknown{op: op, rev: rev})
			return 0, err
		}
		if t.Succeeded {
			return n, nil
		}
		const elseKey, elseMeta = 0, 1
		if t.Responses[elseMeta].GetResponseRange().Count == 0 {
			return 0, fmt.Errorf("%w: %s", pool.ErrUnknownPool, subnet)
		}
		r = (*clientv3.GetResponse)(t.Responses[elseKey].GetResponseRange())
		if retry {
			return refCount(first(r.Kvs)) // the earlier attempt committed late
		}
	}
	return 0, fmt.Errorf("updating %s: %w", key, pool.ErrContention)
}

// first is the first of kvs, nil when there is none.
func first(kvs []*mvccpb.KeyValue) *mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

// keyRev is the revision of the first of kvs, 0 when there is none.
func keyRev(kvs []*mvccpb.KeyValue) int64 {
	if kv := first(kvs); kv != nil {
		return kv.ModRevision
	}
	return 0
}

// refCount decodes a refs/ key's value; nil counts 0.
func refCount(kv *mvccpb.KeyValue) (int, error) {
	if kv == nil {
		return 0, nil
	}
	n, err := strconv.Atoi(string(kv.Value))
	if err != nil {
		return 0, fmt.Errorf("malformed reference count %q at %s", kv.Value, kv.Key)
	}
	return n, nil
}

// refWriters serialises this process's AddRef calls per key and remembers
// the one whose outcome is unknown.
type refWriters struct {
	mu      sync.Mutex
	locks   map[string]*sync.Mutex
	unknown map[string]refUnknown
}

// refUnknown is an AddRef call that failed after it may have committed: op,
// and the key revision its transaction compared.
type refUnknown struct {
	op  string
	rev int64
}

func (w *refWriters) lock(key string) (unlock func()) {
	w.mu.Lock()
	if w.locks == nil {
		w.locks, w.unknown = map[string]*sync.Mutex{}, map[string]refUnknown{}
	}
	l, ok := w.locks[key]
	if !ok {
		l = &sync.Mutex{}
		w.locks[key] = l
	}
	w.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (w *refWriters) setUnknown(key string, u refUnknown) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unknown[key] = u
}

func (w *refWriters) takeUnknown(key string) (refUnknown, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	u, ok := w.unknown[key]
	delete(w.unknown, key)
	return u, ok
}
