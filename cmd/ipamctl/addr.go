package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// kinds lists pool's kinds, in the order listings show them; the test
// checks each against pool.Kind.Known.
var kinds = []pool.Kind{pool.KindContainer, pool.KindGateway, pool.KindAux, pool.KindHost, pool.KindReserved, pool.KindAnycast}

func addrCommand() *cli.Command {
	return &cli.Command{
		Name:  "addr",
		Usage: "list used addresses",
		Subcommands: []*cli.Command{
			{
				Name:      "ls",
				Aliases:   []string{"list"},
				Usage:     "list a pool's used addresses and who holds them",
				ArgsUsage: "SUBNET",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "host", Usage: "only addresses this host holds (shared ones included)"},
					&cli.StringFlag{Name: "kind", Usage: "only addresses of this kind: " + kindList()},
					jsonFlag(),
				},
				Action: addrList,
			},
		},
	}
}

func kindList() string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// addrJSON is one used address in `addr ls --json`, and the removed record
// in `release --json`.
type addrJSON struct {
	Address  string         `json:"address"`
	Kind     string         `json:"kind"`
	Host     string         `json:"host"`
	MAC      string         `json:"mac,omitempty"`
	Endpoint string         `json:"endpoint,omitempty"`
	Holders  map[string]int `json:"holders,omitempty"`
	// MACs: per host, the endpoint holding an anycast address.
	MACs        map[string]string `json:"macs,omitempty"`
	Reservation string            `json:"reservation,omitempty"`
	Sticky      string            `json:"sticky,omitempty"`
	Since       time.Time         `json:"since,omitzero"`
}

func newAddrJSON(u etcdstore.UsedAddr) addrJSON {
	a := u.Allocation
	return addrJSON{
		Address: u.Addr.String(), Kind: string(a.Kind), Host: a.Host, MAC: a.MAC, Endpoint: a.Endpoint,
		Holders: a.Holders, MACs: a.MACs, Reservation: a.Reservation, Sticky: a.Sticky, Since: a.Since.UTC(),
	}
}

// holds reports whether host holds a: as its owner, or as one of the
// hosts sharing a gateway or aux address.
func holds(a *pool.Allocation, host string) bool {
	return a.Host == host || a.Holders[host] > 0
}

func addrList(c *cli.Context) error {
	subnet, err := subnetArg(c)
	if err != nil {
		return err
	}
	kind := pool.Kind(c.String("kind"))
	if kind != "" && !kind.Known() {
		return fmt.Errorf("invalid --kind %q: want one of %s", kind, kindList())
	}
	host := c.String("host")
	var used []etcdstore.UsedAddr
	err = withEtcd(c, 0, func(ctx context.Context, e *env) error {
		// Read the pool first: an empty listing must mean "nothing used",
		// never "no such pool".
		if _, err := e.meta(ctx, subnet); err != nil {
			return err
		}
		used, err = e.store.Used(ctx, subnet)
		return err
	})
	if err != nil {
		return err
	}
	out := []addrJSON{}
	for _, u := range used {
		if (kind != "" && u.Allocation.Kind != kind) || (host != "" && !holds(u.Allocation, host)) {
			continue
		}
		out = append(out, newAddrJSON(u))
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	t := newTable(c.App.Writer, "ADDRESS", "KIND", "HOST", "MAC", "ENDPOINT", "RESERVATION", "HOLDERS", "SINCE")
	for _, a := range out {
		holders := ""
		if a.Kind != string(pool.KindContainer) { // its host and MAC have their own columns
			holders = holderCell(a)
		}
		t.row(a.Address, a.Kind, dash(a.Host), dash(a.MAC), dash(a.Endpoint), dash(a.Reservation), dash(holders), dash(formatTime(a.Since)))
	}
	return t.flush()
}
