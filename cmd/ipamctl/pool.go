package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

func poolCommand() *cli.Command {
	return &cli.Command{
		Name:  "pool",
		Usage: "list, show, set and remove pools",
		Subcommands: []*cli.Command{
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list pools with their address counts",
				Flags:   []cli.Flag{jsonFlag()},
				Action:  poolList,
			},
			{
				Name:      "show",
				Usage:     "show one pool: ranges, counts by kind and by host, hosts using it",
				ArgsUsage: "SUBNET",
				Flags:     []cli.Flag{jsonFlag()},
				Action:    poolShow,
			},
			{
				Name:      "set",
				Usage:     "change a pool's settings, for every host",
				ArgsUsage: "SUBNET",
				Flags:     []cli.Flag{reuseDelayFlag(), stickyTTLFlag()},
				Action:    poolSet,
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove a pool and all its addresses",
				ArgsUsage: "SUBNET",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "force", Usage: "remove it even while addresses are used"},
					jsonFlag(),
				},
				Action: poolRemove,
			},
		},
	}
}

// poolJSON is one pool in `pool ls --json`, and the head of `pool show --json`.
type poolJSON struct {
	Subnet string   `json:"subnet"`
	State  string   `json:"state"` // "ready", or "seeding" until every range address is in the free set
	Ranges []string `json:"ranges"`
	Size   uint64   `json:"size"` // addresses in the ranges
	Free   int64    `json:"free"`
	Used   int64    `json:"used"`
	// Utilisation is used/(free+used) in percent, one decimal. Used may
	// hold addresses outside the ranges (a router), so it is not used/size.
	Utilisation float64 `json:"utilisation"`
	// ReuseDelay and StickyTTL are the pool's, as Go durations ("1m0s").
	ReuseDelay string    `json:"reuseDelay"`
	StickyTTL  string    `json:"stickyTTL"`
	CreatedBy  string    `json:"createdBy"`
	Created    time.Time `json:"created,omitzero"`
}

func newPoolJSON(m pool.Meta, free, used int64) poolJSON {
	p := poolJSON{
		Subnet: m.Subnet.String(), State: "ready", Ranges: rangeList(m.Ranges), Size: pool.SetSize(m.Ranges),
		Free: free, Used: used, ReuseDelay: m.ReuseDelay.String(), StickyTTL: m.StickyTTL.String(), CreatedBy: m.CreatedBy, Created: m.Created.UTC(),
	}
	if m.Seeding {
		p.State = "seeding"
	}
	if free+used > 0 {
		p.Utilisation = math.Round(float64(used)*1000/float64(free+used)) / 10
	}
	return p
}

func (p poolJSON) utilisation() string {
	if p.Free+p.Used == 0 {
		return "-"
	}
	return strconv.FormatFloat(p.Utilisation, 'f', 1, 64) + "%"
}

func poolList(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	var out []poolJSON
	if err := withEtcd(c, 0, func(ctx context.Context, e *env) (err error) { out, err = e.poolRows(ctx); return err }); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	return printPools(c.App.Writer, out)
}

// poolRows reads every pool with its counts, in address order.
func (e *env) poolRows(ctx context.Context) ([]poolJSON, error) {
	metas, err := e.store.Pools(ctx)
	if err != nil {
		return nil, err
	}
	// Keys sort as strings ("10.…" before "9.…"); people read addresses.
	sort.Slice(metas, func(i, j int) bool {
		a, b := metas[i].Subnet, metas[j].Subnet
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c < 0
		}
		return a.Bits() < b.Bits()
	})
	out := []poolJSON{}
	for _, m := range metas {
		free, used, err := e.store.Counts(ctx, m.Subnet)
		if err != nil {
			return nil, err
		}
		out = append(out, newPoolJSON(m, free, used))
	}
	return out, nil
}

func printPools(w io.Writer, pools []poolJSON) error {
	t := newTable(w, "SUBNET", "STATE", "SIZE", "FREE", "USED", "UTILISATION")
	for _, p := range pools {
		t.row(p.Subnet, p.State, strconv.FormatUint(p.Size, 10), strconv.FormatInt(p.Free, 10),
			strconv.FormatInt(p.Used, 10), p.utilisation())
	}
	return t.flush()
}

// poolShowJSON is `pool show --json`.
type poolShowJSON struct {
	poolJSON
	UsedByKind map[string]int `json:"usedByKind"`
	// UsedByHost counts the used addresses each host holds; a shared
	// gateway or aux address counts once for each of its holders.
	UsedByHost map[string]int `json:"usedByHost"`
	// Networks counts, per host, the networks using the pool.
	Networks map[string]int `json:"networks"`
	// Marked lists the reserved and anycast addresses, with who holds them.
	Marked []markJSON `json:"marked"`
}

func poolShow(c *cli.Context) error {
	subnet, err := subnetArg(c)
	if err != nil {
		return err
	}
	var out poolShowJSON
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error {
		m, err := e.meta(ctx, subnet)
		if err != nil {
			return err
		}
		free, used, err := e.store.Counts(ctx, subnet)
		if err != nil {
			return err
		}
		addrs, err := e.store.Used(ctx, subnet)
		if err != nil {
			return err
		}
		refs, err := e.store.Refs(ctx, subnet)
		if err != nil {
			return err
		}
		out = poolShowJSON{poolJSON: newPoolJSON(m, free, used), Networks: refs, Marked: []markJSON{}}
		out.UsedByKind, out.UsedByHost = usage(addrs)
		for _, u := range addrs {
			if isReserved(u.Allocation) || isAnycast(u.Allocation) {
				out.Marked = append(out.Marked, newMarkJSON(subnet, u.Addr, u.Allocation))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	return printPoolShow(c, out)
}

// usage counts used addresses by kind and by host.
func usage(addrs []etcdstore.UsedAddr) (byKind, byHost map[string]int) {
	byKind, byHost = map[string]int{}, map[string]int{}
	for _, k := range kinds {
		byKind[string(k)] = 0
	}
	for _, u := range addrs {
		a := u.Allocation
		byKind[string(a.Kind)]++
		for _, h := range holders(a) {
			byHost[h]++
		}
	}
	return byKind, byHost
}

// holders are the hosts an address counts for: the holders of a shared
// gateway, aux or anycast address, else its one host, if any (an idle
// reservation and an unclaimed host address have none).
func holders(a *pool.Allocation) []string {
	if len(a.Holders) == 0 {
		if a.Host == "" {
			return nil
		}
		return []string{a.Host}
	}
	out := make([]string, 0, len(a.Holders))
	for h := range a.Holders {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

func printPoolShow(c *cli.Context, p poolShowJSON) error {
	w := c.App.Writer
	t := newTable(w, "SUBNET", p.Subnet)
	t.row("STATE", p.State)
	t.row("RANGES", dash(strings.Join(p.Ranges, ",")))
	t.row("SIZE", strconv.FormatUint(p.Size, 10))
	t.row("FREE", strconv.FormatInt(p.Free, 10))
	t.row("USED", strconv.FormatInt(p.Used, 10))
	t.row("UTILISATION", p.utilisation())
	t.row("REUSE DELAY", p.ReuseDelay)
	t.row("STICKY TTL", p.StickyTTL)
	t.row("CREATED", fmt.Sprintf("%s by %s", dash(formatTime(p.Created)), dash(p.CreatedBy)))
	if err := t.flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	t = newTable(w, "KIND", "USED")
	for _, k := range sortedKeys(p.UsedByKind, kindOrder) {
		t.row(k, strconv.Itoa(p.UsedByKind[k]))
	}
	if err := t.flush(); err != nil {
		return err
	}

	// One host table: what each host holds, and how many of its networks
	// use the pool. A host with networks but no addresses is still shown.
	hosts := map[string]int{}
	for h := range p.UsedByHost {
		hosts[h] = 0
	}
	for h := range p.Networks {
		hosts[h] = 0
	}
	fmt.Fprintln(w)
	t = newTable(w, "HOST", "USED", "NETWORKS")
	for _, h := range sortedKeys(hosts, nil) {
		t.row(h, strconv.Itoa(p.UsedByHost[h]), strconv.Itoa(p.Networks[h]))
	}
	if err := t.flush(); err != nil || len(p.Marked) == 0 {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "RESERVED/ANYCAST", "KIND", "NAME", "STATE", "HOLDERS", "SINCE")
	for _, m := range p.Marked {
		t.row(m.Address, m.Kind, dash(m.Reservation), m.State, dash(holderCell(m.addrJSON)), dash(formatTime(m.Since)))
	}
	return t.flush()
}

// kindOrder puts the known kinds first, in their declared order.
func kindOrder(k string) int {
	for i, known := range kinds {
		if string(known) == k {
			return i
		}
	}
	return len(kinds)
}

// sortedKeys orders m's keys by rank (when given), then by name.
func sortedKeys(m map[string]int, rank func(string) int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if rank != nil && rank(keys[i]) != rank(keys[j]) {
			return rank(keys[i]) < rank(keys[j])
		}
		return keys[i] < keys[j]
	})
	return keys
}

func poolSet(c *cli.Context) error {
	subnet, err := subnetArg(c)
	if err != nil {
		return err
	}
	s := settings(c)
	if s == (pool.Settings{}) {
		return errors.New("nothing to set: give --reuse-delay or --sticky-ttl")
	}
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error { return e.pools.Set(ctx, subnet, s) })
	if errors.Is(err, pool.ErrUnknownPool) {
		return fmt.Errorf("pool %s does not exist (see ipamctl pool ls)", subnet)
	}
	if err != nil {
		return err
	}
	if s.ReuseDelay != nil {
		fmt.Fprintf(c.App.Writer, "pool %s: reuse delay %s\n", subnet, *s.ReuseDelay)
	}
	if s.StickyTTL != nil {
		fmt.Fprintf(c.App.Writer, "pool %s: sticky TTL %s\n", subnet, *s.StickyTTL)
	}
	return nil
}

func poolRemove(c *cli.Context) error {
	subnet, err := subnetArg(c)
	if err != nil {
		return err
	}
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error {
		return e.store.DeletePool(ctx, subnet, c.Bool("force"))
	})
	if errors.Is(err, pool.ErrUnknownPool) {
		return fmt.Errorf("pool %s does not exist (see ipamctl pool ls)", subnet)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, struct {
			Subnet  string `json:"subnet"`
			Removed bool   `json:"removed"`
		}{subnet.String(), true})
	}
	// Like `ctr rm`: the name of what was removed, one per line.
	_, err = fmt.Fprintln(c.App.Writer, subnet)
	return err
}
