package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/pool"
)

// Anycast addresses: one address on several hosts on purpose, each host
// holding it at most once.

func anycastCommand() *cli.Command {
	return &cli.Command{
		Name:  "anycast",
		Usage: "mark addresses that several hosts hold at once (anycast services)",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "make an address anycast: every host may run one container with --ip ADDRESS at the same time",
				Description: `The address leaves automatic allocation. Each host may hold it once
(counted per host): a second container on the same host is refused, a
retried request of the same endpoint is not. Stopping a container drops
only its host's hold; the address stays anycast until ipamctl anycast rm.`,
				ArgsUsage: "SUBNET ADDRESS",
				Flags:     []cli.Flag{jsonFlag()},
				Action: func(c *cli.Context) error {
					return editMarked(c, nil, func(ctx context.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error) {
						return e.pools.AddAnycast(ctx, subnet, addr)
					})
				},
			},
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list anycast addresses and the hosts holding each",
				Flags:   []cli.Flag{&cli.StringFlag{Name: "subnet", Usage: "only this pool"}, jsonFlag()},
				Action:  listMarked(isAnycast),
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "free an anycast address (refused while containers hold it, unless --force)",
				ArgsUsage: "SUBNET ADDRESS",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "force", Usage: "also while containers hold it: they keep running with an address that may be handed out again"},
					&cli.StringFlag{Name: "host", Usage: "only drop this host's hold (a host that is gone, or lost its release); the address stays anycast"},
					jsonFlag(),
				},
				Action: anycastRemove,
			},
		},
	}
}

func anycastRemove(c *cli.Context) error {
	return editMarked(c, nil, func(ctx context.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error) {
		host := c.String("host")
		if host == "" {
			return nil, e.pools.RemoveAnycast(ctx, subnet, addr, c.Bool("force"))
		}
		// The host's own release rule, applied on its behalf.
		released, err := pool.New(e.store, pool.Config{Host: host}).Release(ctx, subnet, addr)
		if err == nil && !released {
			err = fmt.Errorf("host %q holds no %s (see ipamctl anycast ls)", host, addr)
		}
		if err != nil {
			return nil, err
		}
		entry, err := e.store.Entry(ctx, subnet, addr)
		return entry.Used, err
	})
}
