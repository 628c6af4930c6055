package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "verify pools' invariants and print every anomaly with a way to fix it",
		Description: `Reads each pool at one revision and checks: no address both free and
used; every seeded address free or used (none lost); free addresses only
inside the seeded ranges; used records well-formed and of a known kind,
reservation and anycast fields only where they belong, each host holding
an anycast address at most once;
gateway, aux and host references consistent with the hosts' networks on
the pool; the owner index matching the container records. It also lists
etcd's alarms (NOSPACE, CORRUPT): while one is raised etcd refuses
changes. Exits non-zero when it finds anything. With no SUBNET it checks
every pool.`,
		ArgsUsage: "[SUBNET...]",
		Flags:     []cli.Flag{jsonFlag()},
		Action:    check,
	}
}

// checkJSON is one pool in `check --json`.
type checkJSON struct {
	Subnet    string         `json:"subnet"`
	Anomalies []pool.Anomaly `json:"anomalies"`
}

func check(c *cli.Context) error {
	args, err := positional(c, 0, -1)
	if err != nil {
		return err
	}
	var only []netip.Prefix
	for _, a := range args {
		s, err := pool.ParseSubnet(a)
		if err != nil {
			return err
		}
		only = append(only, s)
	}
	var out []checkJSON
	var alarms []etcdstore.Alarm
	total := 0
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error {
		var err error
		if alarms, err = e.store.Alarms(ctx); err != nil {
			return err
		}
		subnets := only
		if len(subnets) == 0 {
			var err error
			if subnets, err = e.subnets(ctx, netip.Prefix{}); err != nil {
				return err
			}
		}
		for _, subnet := range subnets {
			snap, err := e.store.Snapshot(ctx, subnet)
			if err != nil {
				return unknownPool(subnet, err)
			}
			found := pool.Check(snap)
			if found == nil {
				found = []pool.Anomaly{}
			}
			total += len(found)
			out = append(out, checkJSON{Subnet: subnet.String(), Anomalies: found})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, out); err != nil {
			return err
		}
	} else {
		t := newTable(c.App.Writer, "SUBNET", "ADDRESS", "PROBLEM", "FIX")
		for _, a := range alarms {
			t.row("etcd", "-", "alarm "+a.String()+": "+a.Effect(), a.Fix())
		}
		for _, p := range out {
			if len(p.Anomalies) == 0 {
				t.row(p.Subnet, "-", "ok", "-")
			}
			for _, a := range p.Anomalies {
				t.row(p.Subnet, a.Address, a.Problem, a.Fix)
			}
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	alarmed := etcdstore.AlarmsError(alarms)
	switch {
	case total > 0 && alarmed != nil:
		return fmt.Errorf("%d anomalies in %d pools; %w", total, len(out), alarmed)
	case total > 0:
		return fmt.Errorf("%d anomalies in %d pools", total, len(out))
	}
	return alarmed
}
