package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/pool"
)

// Sticky bindings: on a network created with --ipam-opt
// talkingdata.sticky=name, each container's address is bound to its name.

func stickyCommand() *cli.Command {
	return &cli.Command{
		Name:  "sticky",
		Usage: "list and end the bindings of container names to addresses (sticky networks)",
		Subcommands: []*cli.Command{
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list bound addresses: held by a container of the name, or idle",
				Flags:   []cli.Flag{&cli.StringFlag{Name: "subnet", Usage: "only this pool"}, jsonFlag()},
				Action:  listMarked(isSticky),
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "end a name's binding: an idle address is freed, a held one stays with its container, unbound",
				ArgsUsage: "SUBNET NAME",
				Flags:     []cli.Flag{jsonFlag()},
				Action:    stickyRemove,
			},
		},
	}
}

func isSticky(a *pool.Allocation) bool { return a.Sticky != "" }

func stickyRemove(c *cli.Context) error {
	args, err := positional(c, 2, 2)
	if err != nil {
		return err
	}
	subnet, err := pool.ParseSubnet(args[0])
	if err != nil {
		return err
	}
	name := args[1]
	return editFound(c, subnet, func(ctx context.Context, e *env) (netip.Addr, error) {
		bound, ok, err := e.store.Binding(ctx, subnet, name)
		switch {
		case err != nil:
			return netip.Addr{}, err
		case !ok:
			return netip.Addr{}, fmt.Errorf("name %q is bound to no address in pool %s (see ipamctl sticky ls)", name, subnet)
		}
		return bound, nil
	}, unreserveEdit)
}
