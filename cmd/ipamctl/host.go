package main

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// Hosts' own LAN addresses (kind host): recorded so no container gets one,
// claimed by the first host that makes one its bridge gateway.

// maxHostAddrs bounds one host-range run, which records its addresses one
// transaction after another: a LAN's hosts, never an IPv6 /64.
const maxHostAddrs = 1 << 16

func hostRangeCommand() *cli.Command {
	return &cli.Command{
		Name:  "host-range",
		Usage: "record hosts' own LAN addresses so containers never get them",
		Description: `Records every address of the ranges as a host address (taking it out of
the free set). The first host whose Docker network uses one as --gateway
(its br0 address) claims it; no other host may then use it. Recording an
address again is harmless; one used by a container is reported and
skipped. Every address is tried; the command fails if any could not be
recorded.`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "subnet", Required: true, Usage: "the pool's subnet"},
			&cli.StringSliceFlag{Name: "range", Required: true, Usage: "host addresses: A-B, a CIDR, or one address (repeatable)"},
			jsonFlag(),
		},
		Action: hostRange,
	}
}

func hostCommand() *cli.Command {
	return &cli.Command{
		Name:  "host",
		Usage: "list and release hosts' own addresses",
		Subcommands: []*cli.Command{
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list host addresses, who claimed them and which networks use them as gateway",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "subnet", Usage: "only this pool"},
					jsonFlag(),
				},
				Action: func(c *cli.Context) error {
					return listCensus(c, func(cen etcdstore.Census, only netip.Prefix) error {
						return printHostAddrs(c, hostRows(cen, only), false)
					})
				},
			},
			{
				Name:      "release",
				Usage:     "forget a host address, returning it to the free set when it is seeded",
				ArgsUsage: "SUBNET ADDRESS",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "force", Usage: "also when a network still uses it as gateway"},
					jsonFlag(),
				},
				Action: hostRelease,
			},
		},
	}
}

// hostAddrJSON is one line of `host ls --json` and `host-range --json`.
type hostAddrJSON struct {
	Address string         `json:"address,omitempty"` // empty: a host with no recorded host address
	Subnet  string         `json:"subnet,omitempty"`
	Host    string         `json:"host,omitempty"`    // the host that claimed it
	Gateway map[string]int `json:"gateway,omitempty"` // networks using it as gateway, per host
	Result  string         `json:"result,omitempty"`  // host-range: recorded, already recorded, failed
	Error   string         `json:"error,omitempty"`
	// host ls: the host's daemon, alive, stopped, dead or unknown (see
	// etcdstore.HostStatus), its instance (the live one's, else the one
	// last seen: tells two daemons of one host id apart), and when it last
	// reported.
	Live     string    `json:"live,omitempty"`
	Instance string    `json:"instance,omitempty"`
	LastSeen time.Time `json:"lastSeen,omitzero"`
}

func hostRange(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	subnet, err := pool.ParseSubnet(c.String("subnet"))
	if err != nil {
		return err
	}
	set, err := seedSet(subnet, c.StringSlice("range"), nil)
	if err != nil {
		return err
	}
	if n := pool.SetSize(set); n > maxHostAddrs {
		return fmt.Errorf("the ranges hold %s addresses; host-range records at most %d per run, one transaction each: give the hosts' own addresses, not the subnet",
			pool.FormatCount(n), maxHostAddrs)
	}
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.do(c, 0, func(ctx context.Context) error { _, err := e.meta(ctx, subnet); return err }); err != nil {
		return err
	}
	var out []hostAddrJSON
	nfailed := 0
	for _, r := range set.Ranges() {
		for a := r.From(); a.IsValid() && !r.To().Less(a); a = a.Next() {
			line := hostAddrJSON{Address: a.String(), Subnet: subnet.String(), Result: "recorded"}
			var added bool
			err := e.do(c, 0, func(ctx context.Context) (err error) {
				added, err = e.pools.AddHostAddr(ctx, subnet, a)
				return err
			})
			switch {
			case err != nil:
				line.Result, line.Error = "failed", err.Error()
				nfailed++
			case !added:
				line.Result = "already recorded"
			}
			out = append(out, line)
		}
	}
	if err := printHostAddrs(c, out, true); err != nil {
		return err
	}
	if nfailed > 0 {
		return fmt.Errorf("%d of %d addresses not recorded", nfailed, len(out))
	}
	return nil
}

// hostRows lists the host addresses (of pool only, if valid), then every
// other host that holds addresses there or, without only, has a liveness
// record; each with its daemon's liveness.
func hostRows(cen etcdstore.Census, only netip.Prefix) []hostAddrJSON {
	out := []hostAddrJSON{}
	listed, holders := map[string]bool{}, map[string]bool{}
	for _, u := range cen.Used {
		if only.IsValid() && u.Subnet != only {
			continue
		}
		a := u.Allocation
		holders[a.Host] = true
		for h := range a.Holders {
			holders[h] = true
		}
		if a.Kind == pool.KindHost {
			out = append(out, hostAddrJSON{Address: u.Addr.String(), Subnet: u.Subnet.String(), Host: a.Host, Gateway: a.Holders})
			listed[a.Host] = true
		}
	}
	if !only.IsValid() {
		for h := range cen.Hosts {
			holders[h] = true
		}
	}
	delete(holders, "")
	var rest []string
	for h := range holders {
		if !listed[h] {
			rest = append(rest, h)
		}
	}
	sort.Strings(rest)
	for _, h := range rest {
		out = append(out, hostAddrJSON{Host: h})
	}
	for i := range out {
		if out[i].Host != "" {
			st := cen.Status(out[i].Host)
			out[i].Live = st.State()
			if st.LastSeen != nil {
				out[i].Instance, out[i].LastSeen = st.LastSeen.Instance, st.LastSeen.Seen.UTC()
			}
			if st.Live != nil {
				out[i].Instance = st.Live.Instance
			}
		}
	}
	return out
}

// subnets is only, after checking it exists, or every pool's subnet.
func (e *env) subnets(ctx context.Context, only netip.Prefix) ([]netip.Prefix, error) {
	if only.IsValid() {
		_, err := e.meta(ctx, only)
		return []netip.Prefix{only}, err
	}
	metas, err := e.store.Pools(ctx)
	out := make([]netip.Prefix, 0, len(metas))
	for _, m := range metas {
		out = append(out, m.Subnet)
	}
	return out, err
}

func hostRelease(c *cli.Context) error {
	subnet, addr, err := subnetAddrArgs(c)
	if err != nil {
		return err
	}
	var was *pool.Allocation
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error {
		if _, err := e.meta(ctx, subnet); err != nil {
			return err
		}
		was, err = e.pools.Evict(ctx, subnet, addr, c.Bool("force"), pool.KindHost)
		return unknownPool(subnet, err)
	})
	if err != nil {
		return err
	}
	if was == nil {
		return fmt.Errorf("%s is not recorded as a host address in pool %s", addr, subnet)
	}
	a := newAddrJSON(etcdstore.UsedAddr{Addr: addr, Allocation: was})
	if c.Bool("json") {
		return printJSON(c.App.Writer, a)
	}
	_, err = fmt.Fprintf(c.App.Writer, "released %s (%s)\n", addr, was.Describe())
	return err
}

func printHostAddrs(c *cli.Context, out []hostAddrJSON, withResult bool) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	if withResult {
		t := newTable(c.App.Writer, "ADDRESS", "RESULT", "DETAIL")
		for _, h := range out {
			t.row(h.Address, h.Result, dash(h.Error))
		}
		return t.flush()
	}
	t := newTable(c.App.Writer, "ADDRESS", "SUBNET", "HOST", "GATEWAY OF", "LIVE", "INSTANCE", "LAST SEEN")
	for _, h := range out {
		gw := (&pool.Allocation{Holders: h.Gateway}).HolderList()
		t.row(dash(h.Address), dash(h.Subnet), dash(h.Host), dash(gw), dash(h.Live), dash(h.Instance), dash(formatTime(h.LastSeen)))
	}
	return t.flush()
}
