package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go4.org/netipx"

	"github.com/talkingdata/ipam/cmd/internal/etcdflags"
	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
)

// defaultEndpoints is where the daemon's embedded etcd serves, so on a
// single host ipamctl needs no flags at all.
var defaultEndpoints = []string{"http://127.0.0.1:2379"}

const defaultTimeout = 10 * time.Second

// newApp builds the command tree. main runs it on os.Args; tests run it
// in-process with Writer and ErrWriter pointed at buffers, which is why
// every command writes through c.App.Writer and c.App.ErrWriter, and why
// commands are built afresh per app rather than kept in package variables
// that one run's parsed flags could leak out of.
func newApp() *cli.App {
	return &cli.App{
		Name:  "ipamctl",
		Usage: "inspect and manage talkingdata IPAM pools in etcd",
		Flags: append(etcdflags.Flags(defaultEndpoints),
			&cli.DurationFlag{Name: "timeout", EnvVars: []string{"IPAM_TIMEOUT"}, Value: defaultTimeout,
				Usage: "bound on each command's etcd calls (init-range adds 1ms per address it seeds)"},
		),
		Commands:        []*cli.Command{initRangeCommand(), poolCommand(), addrCommand(), releaseCommand(), reserveCommand(), stickyCommand(), anycastCommand(), hostRangeCommand(), hostCommand(), checkCommand(), statusCommand(), networkCommand(), bridgeCommand(), vlanCommand(), gcCommand(), etcdCommand()},
		HideHelpCommand: true,
	}
}

// env is one command's connection to etcd and the rules on top of it.
type env struct {
	client    *clientv3.Client
	store     *etcdstore.Store
	pools     *pool.Pools
	timeout   time.Duration
	endpoints string
}

// connect dials etcd from the global flags. Dialing does not wait for
// etcd; an unreachable one shows up as a timeout of the first call.
func connect(c *cli.Context) (*env, error) {
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return nil, fmt.Errorf("invalid --timeout %s: must be positive", timeout)
	}
	cfg := etcdflags.Config(c)
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints: set --etcd-endpoints or IPAM_ETCD_ENDPOINTS")
	}
	cfg.DialTimeout = min(cfg.DialTimeout, timeout)
	client, err := etcdstore.Dial(cfg)
	if err != nil {
		return nil, err
	}
	store := etcdstore.New(client, c.String("etcd-prefix"))
	return &env{
		client: client,
		store:  store,
		// Releases apply each pool's own reuse delay; this one is only
		// recorded in a pool init-range creates.
		pools:     pool.New(store, pool.Config{Host: c.String("host-id"), ReuseDelay: reuseDelay(c)}),
		timeout:   timeout,
		endpoints: strings.Join(cfg.Endpoints, ","),
	}, nil
}

func (e *env) Close() error { return e.client.Close() }

// withEtcd is the opening of every verb whose etcd work is one bounded
// step: connect, run fn under do's deadline (--timeout plus extra), close.
// Verbs that give each of many steps its own deadline call connect.
func withEtcd(c *cli.Context, extra time.Duration, fn func(ctx context.Context, e *env) error) error {
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()
	return e.do(c, extra, func(ctx context.Context) error { return fn(ctx, e) })
}

// reuseDelayFlag sets a pool's reuse delay (init-range, pool set).
func reuseDelayFlag() cli.Flag {
	return &cli.DurationFlag{Name: "reuse-delay", Value: pool.DefaultReuseDelay,
		Usage: "the pool's reuse delay: automatic allocation does not hand a released container address out again for this long, on any host (--ip takes it at once; 0 turns it off)"}
}

// stickyTTLFlag sets how long a pool keeps an idle sticky binding.
func stickyTTLFlag() cli.Flag {
	return &cli.DurationFlag{Name: "sticky-ttl", Value: pool.DefaultStickyTTL,
		Usage: "how long a sticky name keeps its address with no container of that name, before ipamctl gc frees it"}
}

// settings are the pool settings the command's flags give.
func settings(c *cli.Context) pool.Settings {
	var s pool.Settings
	if c.IsSet("reuse-delay") {
		d := c.Duration("reuse-delay")
		s.ReuseDelay = &d
	}
	if c.IsSet("sticky-ttl") {
		d := c.Duration("sticky-ttl")
		s.StickyTTL = &d
	}
	return s
}

// reuseDelay is the command's --reuse-delay, or the default for commands
// without one.
func reuseDelay(c *cli.Context) time.Duration {
	if c.IsSet("reuse-delay") {
		return c.Duration("reuse-delay")
	}
	return pool.DefaultReuseDelay
}

// do runs fn bounded by --timeout plus extra, and turns a deadline into a
// message that says what to check: etcd's client only says "context
// deadline exceeded", which reads like a bug rather than a dead etcd.
func (e *env) do(c *cli.Context, extra time.Duration, fn func(ctx context.Context) error) error {
	limit := e.timeout + extra
	ctx, cancel := context.WithTimeout(c.Context, limit)
	defer cancel()
	err := fn(ctx)
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded)) {
		return fmt.Errorf("etcd at %s did not answer within %s (is it running? check --etcd-endpoints, or raise --timeout): %w",
			e.endpoints, limit, err)
	}
	return err
}

// meta reads a pool, turning "no such pool" into advice.
func (e *env) meta(ctx context.Context, subnet netip.Prefix) (pool.Meta, error) {
	m, ok, err := e.store.Meta(ctx, subnet)
	if err != nil {
		return m, fmt.Errorf("reading pool %s: %w", subnet, err)
	}
	if !ok {
		return m, noPoolError{subnet}
	}
	return m, nil
}

// noPoolError says how to create the missing pool; it still matches
// pool.ErrUnknownPool.
type noPoolError struct{ subnet netip.Prefix }

func (e noPoolError) Error() string {
	return fmt.Sprintf("pool %s does not exist; create it with ipamctl init-range --subnet %s --range RANGE (see ipamctl pool ls)",
		e.subnet, e.subnet)
}

func (e noPoolError) Unwrap() error { return pool.ErrUnknownPool }

// unknownPool replaces the store's bare "pool: no such pool" with advice.
func unknownPool(subnet netip.Prefix, err error) error {
	if errors.Is(err, pool.ErrUnknownPool) {
		return noPoolError{subnet}
	}
	return err
}

// positional returns the arguments, at least lo and at most hi of them
// (hi < 0: no limit), after applying any flags among them. urfave/cli stops
// parsing flags at the first argument, so `pool rm S --force` would
// otherwise quietly treat --force as an argument; operators type flags
// last as often as first.
func positional(c *cli.Context, lo, hi int) ([]string, error) {
	args, err := trailingFlags(c, c.Args().Slice())
	if err != nil {
		return nil, err
	}
	usage := strings.TrimSpace(fmt.Sprintf("usage: %s [options] %s", c.Command.HelpName, c.Command.ArgsUsage))
	switch {
	case len(args) < lo:
		return nil, fmt.Errorf("missing arguments (%s)", usage)
	case hi >= 0 && len(args) > hi:
		return nil, fmt.Errorf("unexpected argument %q (%s)", args[hi], usage)
	}
	return args, nil
}

// trailingFlags sets the command's flags found among args and returns the
// rest. "--" ends the flags, as it does before the arguments.
func trailingFlags(c *cli.Context, args []string) ([]string, error) {
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i+1:]...), nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			rest = append(rest, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := lookupFlag(c.Command.Flags, name)
		if f == nil {
			return nil, fmt.Errorf("flag provided but not defined: %s (see %s --help)", a, c.Command.HelpName)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if i+1 == len(args) {
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
			i++
			value = args[i]
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("invalid value %q for flag %s: %w", value, a, err)
		}
	}
	return rest, nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// subnetArg parses the single SUBNET argument of show, rm and addr ls.
func subnetArg(c *cli.Context) (netip.Prefix, error) {
	args, err := positional(c, 1, 1)
	if err != nil {
		return netip.Prefix{}, err
	}
	return pool.ParseSubnet(args[0])
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"}
}

// printJSON writes v indented. Every v is a struct declared for output
// alone, so scripts see a stable shape even when pool's types change.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table is a text/tabwriter table with an UPPERCASE header.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) {
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// dash stands in for an empty cell, so columns stay aligned and parseable
// with awk.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatTime renders times in tables (JSON carries time.Time, UTC).
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// rangeList renders a set as one string per range ("A-B", or "A"), for JSON.
func rangeList(s *netipx.IPSet) []string {
	out := []string{}
	if s != nil {
		for _, r := range s.Ranges() {
			out = append(out, pool.FormatRange(r))
		}
	}
	return out
}
