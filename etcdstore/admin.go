package etcdstore

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

// Read-only views and whole-pool operations for ipamctl.

// Pools lists every pool's description, ordered by key.
func (s *Store) Pools(ctx context.Context) ([]pool.Meta, error) {
	out, _, err := s.pools(ctx)
	return out, err
}

// pools also returns the revision the list was read at.
func (s *Store) pools(ctx context.Context) ([]pool.Meta, int64, error) {
	r, err := s.get(ctx, s.k.metaDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("listing pools: %w", err)
	}
	out := make([]pool.Meta, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		m, err := decodeMeta(string(kv.Key), kv.Value, kv.ModRevision)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, m)
	}
	return out, r.Header.Revision, nil
}

// Counts returns how many addresses are free and used, without reading them.
func (s *Store) Counts(ctx context.Context, subnet netip.Prefix) (free, used int64, err error) {
	r, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.k.freeDir(subnet), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		clientv3.OpGet(s.k.usedDir(subnet), clientv3.WithPrefix(), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return 0, 0, fmt.Errorf("counting addresses of pool %s: %w", subnet, err)
	}
	return r.Responses[0].GetResponseRange().Count, r.Responses[1].GetResponseRange().Count, nil
}

// UsedAddr is one used address and its record.
type UsedAddr struct {
	Addr       netip.Addr
	Allocation *pool.Allocation
}

// Used lists a pool's used addresses in address order.
func (s *Store) Used(ctx context.Context, subnet netip.Prefix) ([]UsedAddr, error) {
	r, err := s.cli.Get(ctx, s.k.usedDir(subnet), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing used addresses of pool %s: %w", subnet, err)
	}
	out := make([]UsedAddr, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		a, err := parseAddrKey(string(kv.Key))
		if err != nil {
			return nil, err
		}
		alloc, err := decodeAllocation(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, UsedAddr{Addr: a, Allocation: alloc})
	}
	return out, nil
}

// Free lists a pool's free addresses in address order.
func (s *Store) Free(ctx context.Context, subnet netip.Prefix) ([]netip.Addr, error) {
	r, err := s.cli.Get(ctx, s.k.freeDir(subnet), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("listing free addresses of pool %s: %w", subnet, err)
	}
	out := make([]netip.Addr, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		a, err := parseAddrKey(string(kv.Key))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// Refs returns, per host, how many of its networks use the pool.
func (s *Store) Refs(ctx context.Context, subnet netip.Prefix) (map[string]int, error) {
	dir := s.k.refsDir(subnet)
	r, err := s.cli.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing hosts of pool %s: %w", subnet, err)
	}
	out := map[string]int{}
	for _, kv := range r.Kvs {
		n, err := refCount(kv)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(string(kv.Key), dir)] = n
	}
	return out, nil
}

// HostPools returns the pools that some network of host uses (its refs/
// keys, which AddRef writes as the host's networks come and go).
func (s *Store) HostPools(ctx context.Context, host string) ([]netip.Prefix, error) {
	dir := s.k.refsRoot()
	r, err := s.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("listing the pools of host %s: %w", host, err)
	}
	var out []netip.Prefix
	for _, kv := range r.Kvs {
		// refs/<subnet>/<host>: <subnet> holds no "/", a host id may.
		sub, h, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), dir), "/")
		if h != host {
			continue
		}
		subnet, err := parseSubnetKey(sub)
		if err != nil {
			return nil, fmt.Errorf("malformed reference key %s: %w", kv.Key, err)
		}
		out = append(out, subnet)
	}
	return out, nil
}

// DeletePool removes a pool with all its directories in one transaction.
// Unless force, it only does so while nothing is used and no host's network
// uses the pool: compares over the whole used and refs directories make
// that check atomic.
func (s *Store) DeletePool(ctx context.Context, subnet netip.Prefix, force bool) error {
	meta, used, refs := s.k.meta(subnet), s.k.usedDir(subnet), s.k.refsDir(subnet)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(meta), ">", 0)}
	if !force {
		cmps = append(cmps,
			clientv3.Compare(clientv3.CreateRevision(used), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(refs), "=", 0).WithPrefix())
	}
	r, err := s.cli.Txn(ctx).If(cmps...).Then(
		clientv3.OpDelete(meta),
		clientv3.OpDelete(s.k.freeDir(subnet), clientv3.WithPrefix()),
		clientv3.OpDelete(used, clientv3.WithPrefix()),
		clientv3.OpDelete(refs, clientv3.WithPrefix()),
		clientv3.OpDelete(s.k.ownersDir(subnet), clientv3.WithPrefix()),
		clientv3.OpDelete(s.k.delaysDir(subnet), clientv3.WithPrefix()),
		clientv3.OpDelete(s.k.stickyDir(subnet), clientv3.WithPrefix()),
	).Else(
		clientv3.OpGet(meta, clientv3.WithCountOnly()),
		clientv3.OpGet(used, clientv3.WithPrefix(), clientv3.WithCountOnly()),
		clientv3.OpGet(refs, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return fmt.Errorf("removing pool %s: %w", subnet, err)
	}
	if r.Succeeded {
		return nil
	}
	if r.Responses[0].GetResponseRange().Count == 0 {
		return fmt.Errorf("%w: %s", pool.ErrUnknownPool, subnet)
	}
	if n := r.Responses[1].GetResponseRange().Count; n > 0 {
		return fmt.Errorf("pool %s still has %d used addresses (see `ipamctl addr ls %s`); release them or use --force", subnet, n, subnet)
	}
	var hosts []string
	for _, kv := range r.Responses[2].GetResponseRange().Kvs {
		hosts = append(hosts, strings.TrimPrefix(string(kv.Key), refs))
	}
	return fmt.Errorf("pool %s is still used by Docker networks of hosts %s (run `docker network rm` there), or use --force",
		subnet, strings.Join(hosts, ","))
}

// Snapshot reads a pool's whole state in one transaction, so ipamctl
// check sees a single revision.
func (s *Store) Snapshot(ctx context.Context, subnet netip.Prefix) (pool.Snapshot, error) {
	free, used, refs, owners, sticky := s.k.freeDir(subnet), s.k.usedDir(subnet), s.k.refsDir(subnet), s.k.ownersDir(subnet), s.k.stickyDir(subnet)
	r, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.k.meta(subnet)),
		clientv3.OpGet(free, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(used, clientv3.WithPrefix()),
		clientv3.OpGet(refs, clientv3.WithPrefix()),
		clientv3.OpGet(owners, clientv3.WithPrefix()),
		clientv3.OpGet(sticky, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return pool.Snapshot{}, fmt.Errorf("reading pool %s: %w", subnet, err)
	}
	m, ok, err := metaFrom(r.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return pool.Snapshot{}, err
	}
	if !ok {
		return pool.Snapshot{}, fmt.Errorf("%w: %s", pool.ErrUnknownPool, subnet)
	}
	snap := pool.Snapshot{Meta: m, Used: map[netip.Addr][]byte{}, Refs: map[string]int{}}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		if a, err := parseAddrKey(string(kv.Key)); err != nil {
			snap.BadKeys = append(snap.BadKeys, string(kv.Key))
		} else {
			snap.Free = append(snap.Free, a)
		}
	}
	for _, kv := range r.Responses[2].GetResponseRange().Kvs {
		if a, err := parseAddrKey(string(kv.Key)); err != nil {
			snap.BadKeys = append(snap.BadKeys, string(kv.Key))
		} else {
			snap.Used[a] = kv.Value
		}
	}
	for _, kv := range r.Responses[3].GetResponseRange().Kvs {
		n, err := refCount(kv)
		if err != nil {
			snap.BadKeys = append(snap.BadKeys, string(kv.Key))
			continue
		}
		snap.Refs[strings.TrimPrefix(string(kv.Key), refs)] = n
	}
	snap.Owners = addrIndex(r.Responses[4].GetResponseRange().Kvs, owners, &snap.BadKeys)
	snap.Bindings = addrIndex(r.Responses[5].GetResponseRange().Kvs, sticky, &snap.BadKeys)
	return snap, nil
}

// addrIndex reads an index directory whose keys below dir each name an
// address (the owner index, the sticky bindings); a key whose value is not
// an address goes to bad.
func addrIndex(kvs []*mvccpb.KeyValue, dir string, bad *[]string) map[string]netip.Addr {
	index := map[string]netip.Addr{}
	for _, kv := range kvs {
		a, err := netip.ParseAddr(string(kv.Value))
		if err != nil {
			*bad = append(*bad, string(kv.Key))
			continue
		}
		index[strings.TrimPrefix(string(kv.Key), dir)] = a
	}
	return index
}
