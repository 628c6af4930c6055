package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Alarm is an alarm raised on an etcd member: NOSPACE (its database reached
// --quota-backend-bytes, and the whole cluster refuses every write that
// puts a key) or CORRUPT (its data differs from the other members').
type Alarm struct {
	Member string // the member's ID in hex, as etcdctl member list shows it
	Name   string // NOSPACE, CORRUPT
}

func (a Alarm) String() string { return a.Name + " on member " + a.Member }

// Effect says what the alarm does to the cluster, Fix what to do about it.
func (a Alarm) Effect() string {
	switch a.Name {
	case "NOSPACE":
		return "etcd is out of space and refuses every change"
	case "CORRUPT":
		return "the member's data differs from the others', and etcd refuses requests"
	}
	return "etcd may refuse requests"
}

func (a Alarm) Fix() string {
	if a.Name == "NOSPACE" {
		return `ipamctl etcd recover-space (docs/OPERATIONS.md, "etcd out of space (NOSPACE)")`
	}
	return "see etcd's documentation (a CORRUPT member is replaced)"
}

// AlarmsError names the alarms, what they do and what to do, for
// ipamctl's exit status and the daemon's /healthz; nil when there are none.
func AlarmsError(alarms []Alarm) error {
	if len(alarms) == 0 {
		return nil
	}
	var names []string
	for _, a := range alarms {
		names = append(names, fmt.Sprintf("%s: %s; %s", a, a.Effect(), a.Fix()))
	}
	return fmt.Errorf("etcd alarm raised: %s", strings.Join(names, "; "))
}

// Alarms lists the cluster's alarms; none while etcd is healthy.
func (s *Store) Alarms(ctx context.Context) ([]Alarm, error) {
	r, err := s.cli.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing etcd's alarms: %w", err)
	}
	out := make([]Alarm, 0, len(r.Alarms))
	for _, a := range r.Alarms {
		out = append(out, alarmOf(a))
	}
	return out, nil
}

func alarmOf(a *etcdserverpb.AlarmMember) Alarm {
	return Alarm{Member: strconv.FormatUint(a.MemberID, 16), Name: a.Alarm.String()}
}

// Recovery is what RecoverSpace did.
type Recovery struct {
	Revision int64        // history compacted up to this revision
	Members  []Defragment // every member, defragmented
	Disarmed []Alarm      // the NOSPACE alarms ended
}

// Defragment is one member's database before and after defragmenting.
type Defragment struct {
	Endpoint      string
	Before, After int64 // bytes
}

// RecoverSpace ends a NOSPACE alarm the way etcd's maintenance guide does:
// it compacts the history up to the current revision (physically, so the
// space is free when it returns), defragments every member's database (a
// compaction frees pages but the file keeps its size, and the quota counts
// the file), then disarms the NOSPACE alarms. CORRUPT alarms stay: they
// need a member replaced, not space. It frees the history only: when live
// keys fill the quota, the next write raises the alarm again and the quota
// must grow. Defragmenting blocks the member's reads and writes meanwhile.
// ctx bounds it all.
func (s *Store) RecoverSpace(ctx context.Context) (Recovery, error) {
	var out Recovery
	// Any read's header carries the current revision.
	r, err := s.cli.Get(ctx, s.k.metaDir(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return out, fmt.Errorf("reading etcd's revision: %w", err)
	}
	out.Revision = r.Header.Revision
	_, err = s.cli.Compact(ctx, out.Revision, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) { // compacted already: a re-run
		return out, fmt.Errorf("compacting etcd's history up to revision %d: %w", out.Revision, err)
	}
	members, err := s.cli.MemberList(ctx)
	if err != nil {
		return out, fmt.Errorf("listing etcd's members: %w", err)
	}
	for _, m := range members.Members {
		if len(m.ClientURLs) == 0 {
			return out, fmt.Errorf("etcd member %s (%x) has no client URL to defragment it through", m.Name, m.ID)
		}
		d, err := s.defragment(ctx, m.ClientURLs[0])
		if err != nil {
			return out, err
		}
		out.Members = append(out.Members, d)
	}
	alarms, err := s.cli.AlarmList(ctx)
	if err != nil {
		return out, fmt.Errorf("listing etcd's alarms: %w", err)
	}
	for _, a := range alarms.Alarms {
		if a.Alarm != etcdserverpb.AlarmType_NOSPACE {
			continue
		}
		if _, err := s.cli.AlarmDisarm(ctx, (*clientv3.AlarmMember)(a)); err != nil {
			return out, fmt.Errorf("disarming %s: %w", alarmOf(a), err)
		}
		out.Disarmed = append(out.Disarmed, alarmOf(a))
	}
	return out, nil
}

func (s *Store) defragment(ctx context.Context, endpoint string) (Defragment, error) {
	d := Defragment{Endpoint: endpoint}
	st, err := s.cli.Status(ctx, endpoint)
	if err != nil {
		return d, fmt.Errorf("reading the database size of %s: %w", endpoint, err)
	}
	d.Before = st.DbSize
	if _, err := s.cli.Defragment(ctx, endpoint); err != nil {
		return d, fmt.Errorf("defragmenting %s: %w", endpoint, err)
	}
	if st, err = s.cli.Status(ctx, endpoint); err != nil {
		return d, fmt.Errorf("reading the database size of %s after defragmenting: %w", endpoint, err)
	}
	d.After = st.DbSize
	return d, nil
}
