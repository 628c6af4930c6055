package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

func releaseCommand() *cli.Command {
	return &cli.Command{
		Name:  "release",
		Usage: "free used addresses whoever holds them, e.g. those of containers that are gone",
		Description: `Removes each address's record and returns it to the free set (when it
lies in the pool's ranges). A gateway or aux address still referenced by
hosts' networks needs --force. Every address is tried; the command fails
if any of them could not be released. An address that is not in use is
reported as such and is not a failure.`,
		ArgsUsage: "SUBNET ADDRESS [ADDRESS...]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "also release gateway and aux addresses that networks still reference"},
			jsonFlag(),
		},
		Action: release,
	}
}

// Results of one address.
const (
	released = "released"
	notInUse = "not in use"
	failed   = "failed"
)

// releaseJSON is one address in `release --json`.
type releaseJSON struct {
	Address string    `json:"address"`
	Result  string    `json:"result"`            // "released", "not in use" or "failed"
	Removed *addrJSON `json:"removed,omitempty"` // the record released
	Error   string    `json:"error,omitempty"`
}

func release(c *cli.Context) error {
	args, err := positional(c, 2, -1)
	if err != nil {
		return err
	}
	subnet, err := pool.ParseSubnet(args[0])
	if err != nil {
		return err
	}
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()
	// One check up front, so a wrong subnet is one error, not one per address.
	if err := e.do(c, 0, func(ctx context.Context) error { _, err := e.meta(ctx, subnet); return err }); err != nil {
		return err
	}

	out := make([]releaseJSON, 0, len(args)-1)
	details := make([]string, 0, len(args)-1)
	nfailed := 0
	for _, s := range args[1:] {
		r := releaseJSON{Address: s}
		addr, err := pool.ParseAddr(s)
		var was *pool.Allocation
		if err == nil {
			// Each address has its own deadline: one slow release must
			// not eat the time of those after it.
			was, err = releaseOne(c, e, subnet, addr)
		}
		switch {
		case err != nil:
			r.Result, r.Error = failed, err.Error()
			details = append(details, r.Error)
			nfailed++
		case was == nil:
			r.Result = notInUse
			details = append(details, "")
		default:
			a := newAddrJSON(etcdstore.UsedAddr{Addr: addr, Allocation: was})
			r.Result, r.Removed = released, &a
			details = append(details, was.Describe())
		}
		out = append(out, r)
	}

	if c.Bool("json") {
		if err := printJSON(c.App.Writer, out); err != nil {
			return err
		}
	} else {
		t := newTable(c.App.Writer, "ADDRESS", "RESULT", "DETAIL")
		for i, r := range out {
			t.row(r.Address, r.Result, dash(details[i]))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if nfailed > 0 {
		return fmt.Errorf("%d of %d addresses not released", nfailed, len(out))
	}
	return nil
}

// releaseOne evicts one address and returns the record it removed, or nil
// when the address was not in use.
func releaseOne(c *cli.Context, e *env, subnet netip.Prefix, addr netip.Addr) (*pool.Allocation, error) {
	if !subnet.Contains(addr) {
		return nil, fmt.Errorf("address %s is outside subnet %s", addr, subnet)
	}
	var was *pool.Allocation
	err := e.do(c, 0, func(ctx context.Context) (err error) {
		was, err = e.pools.Evict(ctx, subnet, addr, c.Bool("force"), "")
		return unknownPool(subnet, err)
	})
	return was, err
}
