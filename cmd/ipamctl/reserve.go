package main

import (
	"context"
	"errors"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// Reserved (floating) addresses: out of automatic allocation, handed only
// to a container that names them with --ip, on whichever host it runs.

func reserveCommand() *cli.Command {
	return &cli.Command{
		Name:  "reserve",
		Usage: "reserve an address for containers that name it with --ip, on any host (a floating IP)",
		Description: `ipamctl reserve SUBNET ADDRESS --name NAME takes the address out of
automatic allocation: only docker run --ip ADDRESS (on any host) gets it,
and while one container holds it a request on another host is refused
naming the holder. When the container stops (or gc or ipamctl release
frees it) the address returns to the reservation, at once, ready for the
next host. Reserving the address a container holds keeps it with that
container; it stays reserved after. The address may lie outside the
pool's seeded ranges.`,
		ArgsUsage: "SUBNET ADDRESS",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "what the address is for, e.g. the service (required)"},
			jsonFlag(),
		},
		Action: reserve,
		Subcommands: []*cli.Command{
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list reserved addresses, idle or held",
				Flags:   []cli.Flag{&cli.StringFlag{Name: "subnet", Usage: "only this pool"}, jsonFlag()},
				Action:  listMarked(isReserved),
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "end a reservation: an idle address is freed, a held one when its container releases it",
				ArgsUsage: "SUBNET ADDRESS",
				Flags:     []cli.Flag{jsonFlag()},
				Action:    unreserve,
			},
		},
	}
}

// markJSON is one reserved or anycast address in `reserve` and `anycast`
// output: the record, with the pool and whether a container holds it.
type markJSON struct {
	Subnet string `json:"subnet"`
	addrJSON
	State string `json:"state"` // "idle", "held", or "free" once a removal freed it
}

func newMarkJSON(subnet netip.Prefix, addr netip.Addr, a *pool.Allocation) markJSON {
	m := markJSON{Subnet: subnet.String(), State: "free"}
	m.Address = addr.String()
	if a != nil {
		m.addrJSON, m.State = newAddrJSON(etcdstore.UsedAddr{Addr: addr, Allocation: a}), "held"
		if a.Kind == pool.KindReserved || (a.Kind == pool.KindAnycast && len(a.Holders) == 0) {
			m.State = "idle"
		}
	}
	return m
}

func isReserved(a *pool.Allocation) bool { return a.Reservation != "" }
func isAnycast(a *pool.Allocation) bool  { return a.Kind == pool.KindAnycast }

// subnetAddrArgs parses SUBNET ADDRESS.
func subnetAddrArgs(c *cli.Context) (netip.Prefix, netip.Addr, error) {
	args, err := positional(c, 2, 2)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	subnet, err := pool.ParseSubnet(args[0])
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	addr, err := pool.ParseAddr(args[1])
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	return subnet, addr, nil
}

// markEdit is one of pool's operator edits of an address.
type markEdit func(ctx context.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error)

// editMarked applies edit to SUBNET ADDRESS and prints the address as the
// edit left it. check, when given, validates the flags once the arguments
// (and flags after them) are parsed.
func editMarked(c *cli.Context, check func() error, edit markEdit) error {
	subnet, addr, err := subnetAddrArgs(c)
	if err != nil {
		return err
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	return editFound(c, subnet, func(context.Context, *env) (netip.Addr, error) { return addr, nil }, edit)
}

// editFound applies edit to the address of subnet that find names, once
// the pool is known to exist, and prints the address as the edit left it.
func editFound(c *cli.Context, subnet netip.Prefix, find func(ctx context.Context, e *env) (netip.Addr, error), edit markEdit) error {
	var (
		addr netip.Addr
		now  *pool.Allocation
	)
	err := withEtcd(c, 0, func(ctx context.Context, e *env) error {
		if _, err := e.meta(ctx, subnet); err != nil {
			return err
		}
		found, err := find(ctx, e)
		if err != nil {
			return err
		}
		addr = found
		now, err = edit(ctx, e, subnet, addr)
		return unknownPool(subnet, err)
	})
	if err != nil {
		return err
	}
	return printMarked(c, []markJSON{newMarkJSON(subnet, addr, now)})
}

func reserve(c *cli.Context) error {
	check := func() error {
		if c.String("name") == "" {
			return errors.New("missing --name: say what the address is reserved for, e.g. ipamctl reserve SUBNET ADDRESS --name web")
		}
		return nil
	}
	return editMarked(c, check, func(ctx context.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error) {
		return e.pools.Reserve(ctx, subnet, addr, c.String("name"))
	})
}

func unreserve(c *cli.Context) error { return editMarked(c, nil, unreserveEdit) }

// unreserveEdit ends a reservation or a sticky binding (reserve rm, sticky rm).
func unreserveEdit(ctx context.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error) {
	return e.pools.Unreserve(ctx, subnet, addr)
}

// listCensus is the opening of host ls, reserve ls and anycast ls: it
// reads every pool's used addresses, having checked that --subnet, when
// given, is a pool (so an empty list never means a mistyped subnet), and
// hands them to show with that subnet (zero: all pools).
func listCensus(c *cli.Context, show func(cen etcdstore.Census, only netip.Prefix) error) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	var only netip.Prefix
	if s := c.String("subnet"); s != "" {
		var err error
		if only, err = pool.ParseSubnet(s); err != nil {
			return err
		}
	}
	var cen etcdstore.Census
	err := withEtcd(c, 0, func(ctx context.Context, e *env) (err error) {
		if only.IsValid() {
			if _, err = e.meta(ctx, only); err != nil {
				return err
			}
		}
		cen, err = e.store.Census(ctx)
		return err
	})
	if err != nil {
		return err
	}
	return show(cen, only)
}

// listMarked is the action of reserve ls and anycast ls: the used
// addresses that match.
func listMarked(match func(*pool.Allocation) bool) cli.ActionFunc {
	return func(c *cli.Context) error {
		return listCensus(c, func(cen etcdstore.Census, only netip.Prefix) error {
			out := []markJSON{}
			for _, u := range cen.Used {
				if (!only.IsValid() || u.Subnet == only) && match(u.Allocation) {
					out = append(out, newMarkJSON(u.Subnet, u.Addr, u.Allocation))
				}
			}
			return printMarked(c, out)
		})
	}
}

func printMarked(c *cli.Context, out []markJSON) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	t := newTable(c.App.Writer, "SUBNET", "ADDRESS", "KIND", "NAME", "STATE", "HOLDERS", "SINCE")
	for _, m := range out {
		name := m.Reservation
		if name == "" {
			name = m.Sticky
		}
		t.row(m.Subnet, m.Address, dash(m.Kind), dash(name), m.State, dash(holderCell(m.addrJSON)), dash(formatTime(m.Since)))
	}
	return t.flush()
}

// holderCell names who holds an address: each anycast host with its
// endpoint's MAC, the hosts sharing a gateway or aux address, or a
// container's host with its MAC.
func holderCell(a addrJSON) string {
	switch {
	case len(a.MACs) > 0:
		return (&pool.Allocation{MACs: a.MACs}).EndpointList()
	case len(a.Holders) > 0:
		return (&pool.Allocation{Holders: a.Holders}).HolderList()
	case a.Kind == string(pool.KindContainer):
		return a.Host + "=" + a.MAC
	}
	return ""
}
