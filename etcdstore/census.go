package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

// `ipamctl gc`'s consistent view of pools, used addresses and hosts, and
// the guard of its releases.

// ListedAddr is a used address as a Census found it.
type ListedAddr struct {
	Subnet netip.Prefix
	UsedAddr
	Rev int64 // the used key's revision: pool.ReleaseListed compares it
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

// DeadHostGuard holds while h is as dead as a Census found it: no lease
// key, and its lastseen record unchanged. gc releases a dead host's
// addresses under it, so a host that came back keeps them.
func (s *Store) DeadHostGuard(h *HostStatus) pool.Guard {
	return guard{
		clientv3.Compare(clientv3.CreateRevision(s.k.host(h.Host)), "=", 0),
		clientv3.Compare(clientv3.ModRevision(s.k.lastSeen(h.Host)), "=", h.SeenRev),
	}
}
