package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/pool"
)

const (
	// perAddress is added to --timeout for every address init-range seeds:
	// a /16 takes seconds, far more than one etcd round trip.
	perAddress = time.Millisecond
	// progressAbove is the size from which seeding reports its progress;
	// smaller sets finish before anyone would wonder.
	progressAbove = 10_000
)

func initRangeCommand() *cli.Command {
	return &cli.Command{
		Name:  "init-range",
		Usage: "create a pool, or add ranges to one, and seed their addresses as free",
		Description: `Records the ranges in the pool's description and puts every address of
them that is neither free nor used into the free set. Re-running it is
harmless: it adds only what is missing and never touches used addresses.

A CIDR range means its usable addresses: --range 198.18.0.0/16 of subnet
198.18.0.0/16 leaves out the network and broadcast addresses.

A new pool records --reuse-delay; for an existing one, --reuse-delay given
explicitly changes it (as ipamctl pool set does).`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "subnet", Required: true, Usage: "the pool's subnet, e.g. 198.18.0.0/16"},
			&cli.StringSliceFlag{Name: "range", Required: true,
				Usage: "addresses to seed: A-B, a CIDR, or one address (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude",
				Usage: "addresses to leave out of the ranges: A-B, a CIDR, or one address (repeatable)"},
			reuseDelayFlag(),
			jsonFlag(),
		},
		Action: initRange,
	}
}

// initRangeJSON is init-range's --json output.
type initRangeJSON struct {
	Subnet string   `json:"subnet"`
	Ranges []string `json:"ranges"`
	Added  uint64   `json:"added"`
}

func initRange(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	subnet, err := pool.ParseSubnet(c.String("subnet"))
	if err != nil {
		return err
	}
	set, err := seedSet(subnet, c.StringSlice("range"), c.StringSlice("exclude"))
	if err != nil {
		return err
	}
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()

	// Seeding walks the pool's whole ranges, those already recorded too,
	// so the deadline grows with their union, not just with this set.
	size := pool.SetSize(set)
	err = e.do(c, 0, func(ctx context.Context) error {
		m, ok, err := e.store.Meta(ctx, subnet)
		if err != nil {
			return fmt.Errorf("reading pool %s: %w", subnet, err)
		}
		if ok {
			var b netipx.IPSetBuilder
			b.AddSet(set)
			b.AddSet(m.Ranges)
			union, _ := b.IPSet()
			size = pool.SetSize(union)
			return nil
		}
		return warnOverlap(ctx, c, e, subnet)
	})
	if err != nil {
		return err
	}
	// AddRanges refuses more than MaxPoolSize; the cap keeps the
	// multiplication from overflowing on a huge IPv6 range.
	extra := time.Duration(min(size, pool.MaxPoolSize)) * perAddress

	var added uint64
	err = e.do(c, extra, func(ctx context.Context) error {
		if added, err = e.pools.AddRanges(ctx, subnet, set, progress(c.App.ErrWriter, subnet)); err != nil || !c.IsSet("reuse-delay") {
			return err
		}
		return e.pools.Set(ctx, subnet, settings(c))
	})
	if err != nil {
		return err
	}
	out := initRangeJSON{Subnet: subnet.String(), Ranges: rangeList(set), Added: added}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	t := newTable(c.App.Writer, "SUBNET", "RANGES", "ADDED")
	t.row(out.Subnet, pool.FormatRanges(set), strconv.FormatUint(added, 10))
	return t.flush()
}

// warnOverlap warns when a new pool's subnet overlaps an existing pool's.
// Pools are independent, so an address in both could be handed out twice;
// it is only a warning because nothing else enforces it either (the daemon
// creates pools on first use without this check).
func warnOverlap(ctx context.Context, c *cli.Context, e *env, subnet netip.Prefix) error {
	metas, err := e.store.Pools(ctx)
	if err != nil {
		return err
	}
	for _, m := range metas {
		if m.Subnet.Overlaps(subnet) {
			fmt.Fprintf(c.App.ErrWriter, "warning: subnet %s overlaps pool %s: addresses in both may be handed out twice\n", subnet, m.Subnet)
		}
	}
	return nil
}

// seedSet turns --range and --exclude into the set to seed. A CIDR range
// is clipped to the subnet's usable addresses, since writing the subnet
// itself as the range is the natural way to say "all of it". An explicit
// address outside them is refused instead: it is a typo, not an intention.
func seedSet(subnet netip.Prefix, ranges, excludes []string) (*netipx.IPSet, error) {
	usable := pool.HostRange(subnet)
	var b netipx.IPSetBuilder
	for _, s := range ranges {
		r, err := pool.ParseRange(s)
		if err != nil {
			return nil, err
		}
		if !strings.Contains(s, "/") {
			for _, a := range []netip.Addr{r.From(), r.To()} {
				if err := pool.CheckHostAddr(subnet, a); err != nil {
					return nil, fmt.Errorf("range %q: %w", s, err)
				}
			}
			b.AddRange(r)
			continue
		}
		if !subnet.Contains(r.From()) || !subnet.Contains(r.To()) {
			return nil, fmt.Errorf("range %q is not inside subnet %s", s, subnet)
		}
		if !r.Overlaps(usable) {
			return nil, fmt.Errorf("range %q holds no usable address of subnet %s (usable: %s)", s, subnet, pool.FormatRange(usable))
		}
		b.AddRange(r)
	}
	var u netipx.IPSetBuilder
	u.AddRange(usable)
	usableSet, _ := u.IPSet()
	b.Intersect(usableSet) // clips the CIDRs; explicit ranges are inside already
	whole := netipx.RangeOfPrefix(subnet)
	for _, s := range excludes {
		r, err := pool.ParseRange(s)
		if err != nil {
			return nil, fmt.Errorf("--exclude: %w", err)
		}
		if !r.Overlaps(whole) {
			return nil, fmt.Errorf("exclude %q is outside subnet %s", s, subnet)
		}
		b.RemoveRange(r)
	}
	set, err := b.IPSet()
	if err != nil {
		return nil, fmt.Errorf("building the set of ranges: %w", err)
	}
	if len(set.Ranges()) == 0 {
		return nil, errors.New("nothing to seed: the excludes cover every address of the ranges")
	}
	return set, nil
}

// progress reports seeding of large sets about every 10%, to w (stderr),
// so stdout holds only the result and stays parseable.
func progress(w io.Writer, subnet netip.Prefix) func(done, total uint64) {
	var last, tenth uint64
	return func(done, total uint64) {
		if total <= progressAbove {
			return
		}
		if done < last { // a second pass: the ranges grew meanwhile
			tenth = 0
		}
		last = done
		if t := done * 10 / total; t > tenth {
			tenth = t
			fmt.Fprintf(w, "seeding %s: %d/%d\n", subnet, done, total)
		}
	}
}
