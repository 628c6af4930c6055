package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EndpointStatus is one etcd member as its client URL answers.
type EndpointStatus struct {
	Endpoint  string
	Version   string
	DBSize    int64 // bytes
	Leader    bool
	RaftIndex uint64
	Errors    []string // the member's alarms, or why it did not answer
}

// Endpoints asks every endpoint of the client for its status, all at once
// and each bounded by timeout (and ctx): one member that does not answer
// costs the caller one timeout, not one per endpoint, and its row says why
// instead.
func (s *Store) Endpoints(ctx context.Context, timeout time.Duration) []EndpointStatus {
	out := s.statuses(ctx, s.avoid.all, timeout)
	rows := make([]EndpointStatus, len(out))
	for i, st := range out {
		rows[i] = st.EndpointStatus
	}
	return rows
}

// memberStatus is an endpoint's status and whether it answered at all.
type memberStatus struct {
	EndpointStatus
	unreachable bool
}

// statuses asks eps at once, each within timeout.
func (s *Store) statuses(ctx context.Context, eps []string, timeout time.Duration) []memberStatus {
	out := make([]memberStatus, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { out[i] = s.endpoint(ctx, ep, timeout) })
	}
	wg.Wait()
	return out
}

func (s *Store) endpoint(ctx context.Context, ep string, timeout time.Duration) memberStatus {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st := memberStatus{EndpointStatus: EndpointStatus{Endpoint: ep}}
	r, err := s.cli.Status(ctx, ep)
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The client waits for a connection until the deadline, so a
		// closed port and a frozen member both end here.
		st.Errors, st.unreachable = []string{fmt.Sprintf("no answer within %s: %v", timeout, err)}, true
	case err != nil:
		st.Errors, st.unreachable = []string{err.Error()}, true
	default:
		st.Version, st.DBSize, st.RaftIndex = r.Version, r.DbSize, r.RaftIndex
		st.Leader = r.Leader == r.Header.MemberId
		st.Errors = r.Errors
	}
	return st
}

// HostLiveness is one host's liveness as etcd holds it now.
type HostLiveness struct {
	HostStatus
	// LeaseTTL is how long the lease of the host's record has left: the
	// daemon must renew it before then or be taken for gone. Zero without
	// a live record.
	LeaseTTL time.Duration
}

// Host reads one host's liveness: its lease-bound record and lastseen.
func (s *Store) Host(ctx context.Context, host string) (HostLiveness, error) {
	r, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.k.host(host)), clientv3.OpGet(s.k.lastSeen(host))).Commit()
	if err != nil {
		return HostLiveness{}, fmt.Errorf("reading host %s: %w", host, err)
	}
	h := HostLiveness{HostStatus: HostStatus{Host: host}}
	if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		h.Live = &HostRecord{}
		if err := json.Unmarshal(kvs[0].Value, h.Live); err != nil {
			return h, fmt.Errorf("malformed host record at %s: %w", kvs[0].Key, err)
		}
		ttl, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(kvs[0].Lease))
		if err != nil {
			return h, fmt.Errorf("reading the lease of host %s: %w", host, err)
		}
		h.LeaseTTL = time.Duration(ttl.TTL) * time.Second
	}
	if kvs := r.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		h.LastSeen = &LastSeen{}
		if err := json.Unmarshal(kvs[0].Value, h.LastSeen); err != nil {
			return h, fmt.Errorf("malformed last-seen record at %s: %w", kvs[0].Key, err)
		}
		h.SeenRev = kvs[0].ModRevision
	}
	return h, nil
}

// Ping reads from etcd with quorum, as an allocation would: an error means
// allocations would fail now.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.cli.Get(ctx, s.k.metaDir(), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("reading from etcd: %w", err)
	}
	return nil
}
