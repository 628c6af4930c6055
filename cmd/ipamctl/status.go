package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "etcd's members, this host's daemon liveness, and every pool's utilisation",
		Description: `What the daemon on this host depends on, in one look: each etcd endpoint's
version, leadership, database size and alarms (or why it does not answer),
and the cluster's alarms (NOSPACE, CORRUPT: etcd refuses changes);
the liveness record of --host-id (the daemon's lease-bound key, the lease's
time left, and when it last recorded itself, with a warning when its
dockerd sends no endpoint names to sticky networks, which then give
ordinary addresses); and every pool as pool ls shows it. Each endpoint is asked on its own, all at once, for at most 2s,
and the host and the pools are read through the members that answer, so
one member down still gives the whole report. Exits 1 when an endpoint
does not answer, an alarm is raised, or the host's daemon is not alive.`,
		ArgsUsage: " ",
		Flags:     []cli.Flag{jsonFlag()},
		Action:    status,
	}
}

// statusJSON is `status --json`.
type statusJSON struct {
	Etcd []endpointJSON `json:"etcd"`
	// Alarms is absent (null) when etcd could not be read.
	Alarms []alarmJSON `json:"alarms"`
	// Host and Pools are absent (null) when etcd could not be read.
	Host  *hostJSON  `json:"host,omitempty"`
	Pools []poolJSON `json:"pools"`
}

type endpointJSON struct {
	Endpoint  string   `json:"endpoint"`
	Version   string   `json:"version,omitempty"`
	Leader    bool     `json:"leader"`
	DBSize    int64    `json:"dbSize"`
	RaftIndex uint64   `json:"raftIndex"`
	Errors    []string `json:"errors,omitempty"`
}

type alarmJSON struct {
	Member string `json:"member"` // hex, as etcdctl member list shows it
	Alarm  string `json:"alarm"`  // NOSPACE, CORRUPT
	Effect string `json:"effect"`
	Fix    string `json:"fix"`
}

type hostJSON struct {
	Host      string    `json:"host"`
	State     string    `json:"state"`
	Since     time.Time `json:"since,omitzero"` // when the live daemon started
	PID       int       `json:"pid,omitempty"`
	LeaseLeft string    `json:"leaseLeft,omitempty"`
	LastSeen  time.Time `json:"lastSeen,omitzero"`
	// NamelessSticky are the subnets of the host's sticky networks whose
	// dockerd sends no endpoint names (before Docker 29), as of LastSeen.
	NamelessSticky []string `json:"namelessSticky,omitempty"`
}

// probeTimeout bounds each endpoint's status: a member that has not
// answered by then is reported as down rather than holding up the report.
const probeTimeout = 2 * time.Second

func status(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()
	var out statusJSON
	answered := 0
	for _, ep := range e.store.Endpoints(c.Context, min(probeTimeout, e.timeout)) {
		out.Etcd = append(out.Etcd, endpointJSON{Endpoint: ep.Endpoint, Version: ep.Version, Leader: ep.Leader,
			DBSize: ep.DBSize, RaftIndex: ep.RaftIndex, Errors: ep.Errors})
		if ep.Version != "" {
			answered++
		}
	}
	// The client sends the rest only to members it has a connection to,
	// so one that is down costs nothing more. With none answering, the
	// reads would only wait out --timeout to say so again.
	readErr := errors.New("no etcd endpoint answers, so neither the host nor the pools were read")
	if answered > 0 {
		readErr = e.do(c, 0, func(ctx context.Context) error {
			alarms, err := e.store.Alarms(ctx)
			if err != nil {
				return err
			}
			out.Alarms = []alarmJSON{}
			for _, a := range alarms {
				out.Alarms = append(out.Alarms, alarmJSON{Member: a.Member, Alarm: a.Name, Effect: a.Effect(), Fix: a.Fix()})
			}
			h, err := e.store.Host(ctx, c.String("host-id"))
			if err != nil {
				return err
			}
			host := newHostJSON(h)
			out.Host = &host
			out.Pools, err = e.poolRows(ctx)
			return err
		})
	}
	if c.Bool("json") {
		err = printJSON(c.App.Writer, out)
	} else {
		err = printStatus(c.App.Writer, out)
	}
	if err != nil {
		return err
	}
	switch problem := out.problem(); {
	case readErr == nil:
		return problem
	case problem == nil:
		return readErr
	default:
		return fmt.Errorf("%v; %w", problem, readErr)
	}
}

func newHostJSON(h etcdstore.HostLiveness) hostJSON {
	out := hostJSON{Host: h.Host, State: h.State()}
	if h.Live != nil {
		out.Since, out.PID, out.LeaseLeft = h.Live.Since.UTC(), h.Live.PID, h.LeaseTTL.String()
	}
	if h.LastSeen != nil {
		out.LastSeen, out.NamelessSticky = h.LastSeen.Seen.UTC(), h.LastSeen.NamelessSticky
	}
	return out
}

// problem is the exit status: what would make this host's allocations fail.
func (s statusJSON) problem() error {
	var bad []string
	for _, ep := range s.Etcd {
		if ep.Version == "" {
			bad = append(bad, "etcd "+ep.Endpoint+" does not answer")
		}
	}
	var alarms []etcdstore.Alarm
	for _, a := range s.Alarms {
		alarms = append(alarms, etcdstore.Alarm{Member: a.Member, Name: a.Alarm})
	}
	if err := etcdstore.AlarmsError(alarms); err != nil {
		bad = append(bad, err.Error())
	}
	if s.Host != nil && s.Host.State != etcdstore.HostAlive {
		bad = append(bad, fmt.Sprintf("the daemon of host %q is %s (is talkingdata-ipam running with --host-id %s?)", s.Host.Host, s.Host.State, s.Host.Host))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

func printStatus(w io.Writer, s statusJSON) error {
	t := newTable(w, "ETCD ENDPOINT", "VERSION", "LEADER", "DB SIZE", "RAFT INDEX", "ERRORS")
	for _, ep := range s.Etcd {
		leader := "no"
		if ep.Leader {
			leader = "yes"
		}
		t.row(ep.Endpoint, dash(ep.Version), leader, fmt.Sprintf("%.1f MB", float64(ep.DBSize)/1e6),
			strconv.FormatUint(ep.RaftIndex, 10), dash(strings.Join(ep.Errors, "; ")))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(s.Alarms) > 0 {
		fmt.Fprintln(w)
		t = newTable(w, "ETCD ALARM", "MEMBER", "EFFECT", "FIX")
		for _, a := range s.Alarms {
			t.row(a.Alarm, a.Member, a.Effect, a.Fix)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if s.Host == nil {
		return nil // the error says why
	}
	fmt.Fprintln(w)
	h := s.Host
	t = newTable(w, "HOST", "DAEMON", "SINCE", "PID", "LEASE LEFT", "LAST SEEN")
	pid := ""
	if h.PID != 0 {
		pid = strconv.Itoa(h.PID)
	}
	t.row(h.Host, h.State, dash(formatTime(h.Since)), dash(pid), dash(h.LeaseLeft), dash(formatTime(h.LastSeen)))
	if err := t.flush(); err != nil {
		return err
	}
	if len(h.NamelessSticky) > 0 {
		// Not a failure (allocations work), so not in the exit status.
		fmt.Fprintf(w, "warning: host %s's dockerd sends no endpoint names (Docker before 29): its containers on the sticky networks of pool %s get ordinary addresses (as of %s); upgrade its Docker engine to 29 or later\n",
			h.Host, strings.Join(h.NamelessSticky, ", "), formatTime(h.LastSeen))
	}
	if s.Pools == nil {
		return nil
	}
	fmt.Fprintln(w)
	return printPools(w, s.Pools)
}
