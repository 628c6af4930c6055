package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

// `ipamctl gc`'s consistent view of pools, used addresses and hosts, and
// its compare-guarded release.

// ListedAddr is a used address as a Census found it.
type ListedAddr struct {
	Subnet netip.Prefix
	UsedAddr
	Rev int64 // the used key's revision, compared by ReleaseListed
}

// Census is every pool, used address and host status at one revision.
type Census struct {
	Rev   int64
	Pools map[netip.Prefix]pool.Meta
	Used  []ListedAddr // in key order: by pool, then by address
	Hosts map[string]*HostStatus
}

// Status returns host's status, an empty one (HostUnknown) when etcd
// holds nothing about it.
func (s *Census) Status(host string) *HostStatus {
	if h := s.Hosts[host]; h != nil {
		return h
	}
	return &HostStatus{Host: host}
}

// Census reads pools, used addresses and liveness in one transaction,
// so what it says about a host and its addresses is consistent. ctx bounds
// the one round trip.
func (s *Store) Census(ctx context.Context) (Census, error) {
	r, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.k.metaDir(), clientv3.WithPrefix()),
		clientv3.OpGet(s.k.usedRoot(), clientv3.WithPrefix()),
		clientv3.OpGet(s.k.hostsDir(), clientv3.WithPrefix()),
		clientv3.OpGet(s.k.lastSeenDir(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Census{}, fmt.Errorf("reading pools and hosts: %w", err)
	}
	cen := Census{Rev: r.Header.Revision, Pools: map[netip.Prefix]pool.Meta{}, Hosts: map[string]*HostStatus{}}
	for _, kv := range r.Responses[0].GetResponseRange().Kvs {
		m, err := decodeMeta(string(kv.Key), kv.Value, kv.ModRevision)
		if err != nil {
			return cen, err
		}
		cen.Pools[m.Subnet] = m
	}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		a, err := s.listed(kv)
		if err != nil {
			return cen, err
		}
		cen.Used = append(cen.Used, a)
	}
	status := func(host string) *HostStatus {
		if cen.Hosts[host] == nil {
			cen.Hosts[host] = &HostStatus{Host: host}
		}
		return cen.Hosts[host]
	}
	for _, kv := range r.Responses[2].GetResponseRange().Kvs {
		var rec HostRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return cen, fmt.Errorf("malformed host record at %s: %w", kv.Key, err)
		}
		status(strings.TrimPrefix(string(kv.Key), s.k.hostsDir())).Live = &rec
	}
	for _, kv := range r.Responses[3].GetResponseRange().Kvs {
		var seen LastSeen
		if err := json.Unmarshal(kv.Value, &seen); err != nil {
			return cen, fmt.Errorf("malformed last-seen record at %s: %w", kv.Key, err)
		}
		h := status(strings.TrimPrefix(string(kv.Key), s.k.lastSeenDir()))
		h.LastSeen, h.SeenRev = &seen, kv.ModRevision
	}
	return cen, nil
}

// listed decodes a used/<subnet>/<addr> key and its record.
func (s *Store) listed(kv *mvccpb.KeyValue) (ListedAddr, error) {
	key := string(kv.Key)
	subnetPart, _, ok := strings.Cut(strings.TrimPrefix(key, s.k.usedRoot()), "/")
	i := strings.LastIndexByte(subnetPart, '-')
	if !ok || i < 0 {
		return ListedAddr{}, fmt.Errorf("malformed used key %q", key)
	}
	bits, err := strconv.Atoi(subnetPart[i+1:])
	addr, perr := netip.ParseAddr(subnetPart[:i])
	if err != nil || perr != nil {
		return ListedAddr{}, fmt.Errorf("malformed used key %q", key)
	}
	subnet, err := addr.Prefix(bits)
	if err != nil {
		return ListedAddr{}, fmt.Errorf("malformed used key %q", key)
	}
	a, err := parseAddrKey(key)
	if err != nil {
		return ListedAddr{}, err
	}
	alloc, err := decodeAllocation(key, kv.Value)
	if err != nil {
		return ListedAddr{}, err
	}
	return ListedAddr{Subnet: subnet, UsedAddr: UsedAddr{Addr: a, Allocation: alloc}, Rev: kv.ModRevision}, nil
}

// ReleaseListed frees a, as listed by Census, and its owner-index entry,
// in one transaction that succeeds only if its record is unchanged since
// (same revision): an address released and handed to someone else
// meanwhile is never freed. A container holding a reservation returns to
// the idle reservation instead of the free set. With dead set, it also requires that dead.Host
// has no lease key and that its lastseen record is the one listed: a host
// that came back keeps its addresses. The address returns to the free set
// if it lies in the pool's seeded ranges, as pool's release rule does,
// kept from automatic allocation for delay (zero: not at all). released is
// false when something changed; err only reports a failed store.
func (s *Store) ReleaseListed(ctx context.Context, a ListedAddr, dead *HostStatus, delay time.Duration) (released bool, err error) {
	used, meta := s.k.used(a.Subnet, a.Addr), s.k.meta(a.Subnet)
	m, ok, err := s.Meta(ctx, a.Subnet)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err != nil || !ok {
			return false, err // a pool removed meanwhile took the address with it
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(used), "=", a.Rev),
			clientv3.Compare(clientv3.ModRevision(meta), "=", m.Rev),
		}
		if dead != nil {
			cmps = append(cmps,
				clientv3.Compare(clientv3.CreateRevision(s.k.host(dead.Host)), "=", 0),
				clientv3.Compare(clientv3.ModRevision(s.k.lastSeen(dead.Host)), "=", dead.SeenRev))
		}
		ops := []clientv3.Op{clientv3.OpDelete(used)}
		if idle := a.Allocation.Vacated(time.Now().UTC()); idle != nil {
			// A reserved address stays reserved, out of the free set.
			value, err := json.Marshal(idle)
			if err != nil {
				return false, err
			}
			ops = []clientv3.Op{clientv3.OpPut(used, string(value))}
		} else if m.Ranges.Contains(a.Addr) {
			ops = append(ops, clientv3.OpPut(s.k.free(a.Subnet, a.Addr), ""))
			if delay > 0 && a.Allocation.Kind == pool.KindContainer {
				lease, err := s.delayLease(ctx, delay)
				if err != nil {
					return false, fmt.Errorf("releasing %s in pool %s: %w", a.Addr, a.Subnet, err)
				}
				ops = append(ops, clientv3.OpPut(s.k.delay(a.Subnet, a.Addr), "", clientv3.WithLease(lease)))
			}
		}
		if owner := s.k.owner(a.Subnet, a.Allocation); owner != "" {
			// The owner index goes with the record, if it names this
			// address (the same endpoint cannot hold two).
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(owner), "=", a.Addr.String())},
				[]clientv3.Op{clientv3.OpDelete(owner)}, nil))
		}
		r, terr := s.cli.Txn(ctx).If(cmps...).Then(ops...).
			Else(clientv3.OpGet(used, clientv3.WithKeysOnly()), clientv3.OpGet(meta)).Commit()
		if terr != nil {
			return false, fmt.Errorf("releasing %s in pool %s: %w", a.Addr, a.Subnet, terr)
		}
		if r.Succeeded {
			return true, nil
		}
		kvs := r.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].ModRevision != a.Rev {
			return false, nil // released, or re-allocated, meanwhile
		}
		// The record is unchanged. If the pool's ranges moved, retry with
		// them; otherwise the dead host came back: leave it alone.
		prev := m.Rev
		if m, ok, err = metaFrom(r.Responses[1].GetResponseRange().Kvs); err == nil && ok && m.Rev == prev {
			return false, nil
		}
	}
	return false, fmt.Errorf("releasing %s in pool %s: %w", a.Addr, a.Subnet, pool.ErrContention)
}
