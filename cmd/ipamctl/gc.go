package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/dockerapi"
	"github.com/talkingdata/ipam/pool"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "find (and with --apply free) container addresses no container uses",
		Description: `Without --dead-hosts: compares the container addresses this host owns in
etcd (--host-id) with the endpoints its dockerd reports (--docker-host).
An address no endpoint and no running container has is an orphan: dockerd
lost its release (it only logs release errors), or the plugin failed after
committing. A stopped container holds no address (dockerd releases it on
stop), so its old address is an orphan too. Addresses younger than
--min-age are kept: their container may still be starting.

With --dead-hosts: lists the container addresses of hosts whose daemon has
no liveness lease and was last seen longer ago than --grace. Never this
host's, never a host with a live lease, never a host without any liveness
record. Gateway, aux, host and anycast addresses of dead hosts are only
listed, with the command that would release them.

A released container address that is reserved (ipamctl reserve) returns to
its reservation, not to the free set.

Nothing changes without --apply. Each release is one etcd transaction that
succeeds only if the record is unchanged since it was listed (and, for a
dead host, while it is still dead), so an address re-allocated meanwhile is
never freed.

RESULT is one of:
` + gcResultHelp(),
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "apply", Usage: "release the orphans (default: only list them)"},
			dockerHostFlag("this host's Docker API"),
			&cli.StringFlag{Name: "host-id", Usage: "the host whose addresses to check (default: the global --host-id)"},
			&cli.DurationFlag{Name: "min-age", Value: time.Minute, Usage: "keep addresses allocated more recently than this"},
			&cli.BoolFlag{Name: "dead-hosts", Usage: "reclaim container addresses of dead hosts instead"},
			&cli.DurationFlag{Name: "grace", Value: 10 * time.Minute, Usage: "with --dead-hosts: how long a host must have been gone"},
			jsonFlag(),
		},
		Action: gc,
	}
}

// Results of one address in gc.
const (
	gcOrphan   = "orphan"
	gcReleased = "released"
	gcChanged  = "changed"
	gcFailed   = "failed"
	gcYoung    = "young"
	gcGrace    = "grace"
	gcUnseen   = "unseen"
	gcAdvice   = "advice"
	gcExpired  = "expired"
)

// gcResults says what each result means, for gc --help.
var gcResults = []struct{ result, means string }{
	{gcOrphan, "no container has it: released with --apply"},
	{gcReleased, "released by --apply"},
	{gcChanged, "changed since it was listed (re-allocated, its host back): kept"},
	{gcFailed, "--apply could not release it (DETAIL says why)"},
	{gcYoung, "allocated less than --min-age ago, its container may be starting: kept (--min-age 0s includes it)"},
	{gcGrace, "its host died less than --grace ago: kept"},
	{gcUnseen, "its host has no liveness record: kept"},
	{gcAdvice, "a dead host's gateway, aux, host or anycast address: listed with the command that frees it"},
	{gcExpired, "a sticky name's address no container of that name has held for the pool's sticky TTL: freed with --apply"},
}

func gcResultHelp() string {
	var b strings.Builder
	for _, r := range gcResults {
		fmt.Fprintf(&b, "  %-9s %s\n", r.result, r.means)
	}
	return b.String()
}

// gcJSON is the output of `gc --json`.
type gcJSON struct {
	Host      string       `json:"host"` // this host
	DeadHosts bool         `json:"deadHosts"`
	Applied   bool         `json:"applied"`
	Addresses []gcAddrJSON `json:"addresses"`
}

type gcAddrJSON struct {
	Subnet string `json:"subnet"`
	addrJSON
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
}

// gcCandidate is one listed address with what gc makes of it.
type gcCandidate struct {
	listed etcdstore.ListedAddr
	dead   *etcdstore.HostStatus // the dead owner, for the release guard
	row    gcAddrJSON
}

func gc(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	deadHosts := c.Bool("dead-hosts")
	switch {
	case c.Duration("min-age") < 0 || c.Duration("grace") < 0:
		return fmt.Errorf("--min-age and --grace must not be negative")
	case deadHosts && c.IsSet("min-age"):
		return fmt.Errorf("--min-age applies to this host's addresses; with --dead-hosts use --grace")
	case !deadHosts && c.IsSet("grace"):
		return fmt.Errorf("--grace needs --dead-hosts")
	}
	host := gcHost(c)
	if host == "" {
		return fmt.Errorf("no host id: set --host-id")
	}
	e, err := connect(c)
	if err != nil {
		return err
	}
	defer e.Close()
	// etcd first, Docker second: an address allocated after the census is
	// not in it, so a container starting meanwhile cannot look orphaned.
	var cen etcdstore.Census
	if err := e.do(c, 0, func(ctx context.Context) (err error) { cen, err = e.store.Census(ctx); return err }); err != nil {
		return err
	}
	var found []gcCandidate
	if deadHosts {
		found = deadHostOrphans(cen, host, c.Duration("grace"), time.Now())
	} else {
		live, err := dockerInUse(c.Context, c.String("docker-host"))
		if err != nil {
			return err
		}
		found = append(localOrphans(cen, host, live, c.Duration("min-age"), time.Now()), expiredBindings(cen, time.Now())...)
	}
	nfailed := 0
	if c.Bool("apply") {
		for i := range found {
			f := &found[i]
			if f.row.Result != gcOrphan && f.row.Result != gcExpired {
				continue
			}
			var guards []pool.Guard
			if f.dead != nil {
				guards = append(guards, e.store.DeadHostGuard(f.dead))
			}
			var ok bool
			err := e.do(c, 0, func(ctx context.Context) (err error) {
				if f.row.Result == gcExpired {
					ok, err = e.pools.ExpireBinding(ctx, f.listed.Subnet, f.listed.Addr, f.listed.Rev)
				} else {
					ok, err = e.pools.ReleaseListed(ctx, f.listed.Subnet, f.listed.Addr, f.listed.Rev, guards...)
				}
				return err
			})
			switch {
			case err != nil:
				f.row.Result, f.row.Detail = gcFailed, err.Error()
				nfailed++
			case ok:
				f.row.Result = gcReleased
				if r := f.listed.Allocation.Reservation; r != "" {
					f.row.Detail = fmt.Sprintf("back to its reservation %q", r)
				}
			default:
				f.row.Result, f.row.Detail = gcChanged, "changed since it was listed (released, re-allocated, or its host came back): kept"
			}
		}
	}
	return printGC(c, gcJSON{Host: host, DeadHosts: deadHosts, Applied: c.Bool("apply"), Addresses: gcRows(found)}, nfailed)
}

// expiredBindings are the idle sticky bindings that no container of their
// name has held for longer than their pool's sticky TTL. They belong to no
// host: any host's gc finds them.
func expiredBindings(cen etcdstore.Census, now time.Time) []gcCandidate {
	var out []gcCandidate
	for _, u := range cen.Used {
		a := u.Allocation
		if !a.IdleBinding() {
			continue
		}
		ttl := cen.Pools[u.Subnet].StickyTTL
		if idle := now.Sub(a.Since); idle >= ttl {
			out = append(out, gcCandidate{listed: u, row: newGCRow(u, gcExpired,
				fmt.Sprintf("name %q unused for %s (sticky TTL %s)", a.Sticky, idle.Round(time.Second), ttl))})
		}
	}
	return out
}

// gcHost is gc's --host-id, else the global one.
func gcHost(c *cli.Context) string {
	for _, ctx := range c.Lineage() {
		if h := ctx.String("host-id"); h != "" {
			return h
		}
	}
	return ""
}

// localOrphans are host's container addresses that no live endpoint has,
// and, as advice, its anycast holds that none has.
func localOrphans(cen etcdstore.Census, host string, live map[netip.Addr]string, minAge time.Duration, now time.Time) []gcCandidate {
	var out []gcCandidate
	for _, u := range cen.Used {
		a := u.Allocation
		if _, ok := live[u.Addr]; ok {
			continue
		}
		if a.Kind == pool.KindAnycast && a.Holders[host] > 0 {
			// Only listed: the hold has no time of its own to tell a
			// container still starting, and other hosts share the record.
			out = append(out, gcCandidate{listed: u, row: newGCRow(u, gcAdvice, fmt.Sprintf(
				"anycast hold of this host that no endpoint here has; if none should: ipamctl anycast rm %s %s --host %s", u.Subnet, u.Addr, host))})
			continue
		}
		if a.Kind != pool.KindContainer || a.Host != host {
			continue
		}
		f := gcCandidate{listed: u, row: newGCRow(u, gcOrphan, "no endpoint or running container on this host's dockerd has it")}
		if age := now.Sub(a.Since); age < minAge {
			f.row.Result = gcYoung
			f.row.Detail = fmt.Sprintf("allocated %s ago, less than --min-age %s: its container may still be starting", age.Round(time.Second), minAge)
		}
		out = append(out, f)
	}
	return out
}

// deadHostOrphans are the container addresses of hosts that are not
// alive, and the other addresses those hosts hold, as advice.
func deadHostOrphans(cen etcdstore.Census, self string, grace time.Duration, now time.Time) []gcCandidate {
	// gone reports whether h is dead for longer than grace, and describes
	// why it is kept otherwise.
	gone := func(h string) (ok bool, result, detail string) {
		st := cen.Status(h)
		switch st.State() {
		case etcdstore.HostAlive:
			return false, "", ""
		case etcdstore.HostUnknown:
			return false, gcUnseen, fmt.Sprintf("host %q has no liveness record (its daemon predates them, or never ran): release by hand once sure", h)
		}
		seen := st.LastSeen.Seen
		if until := seen.Add(grace); now.Before(until) {
			return false, gcGrace, fmt.Sprintf("host %q %s, last seen %s: reclaimable after %s", h, st.State(), formatTime(seen), formatTime(until))
		}
		return true, gcOrphan, fmt.Sprintf("host %q %s, last seen %s (%s ago)", h, st.State(), formatTime(seen), now.Sub(seen).Round(time.Second))
	}
	var out []gcCandidate
	for _, u := range cen.Used {
		a := u.Allocation
		if a.Kind == pool.KindContainer {
			if a.Host == self {
				continue
			}
			ok, result, detail := gone(a.Host)
			if result == "" {
				continue
			}
			f := gcCandidate{listed: u, row: newGCRow(u, result, detail)}
			if ok {
				f.dead = cen.Status(a.Host)
			}
			out = append(out, f)
			continue
		}
		if detail := deadHolderAdvice(u, self, func(h string) bool { ok, _, _ := gone(h); return ok }); detail != "" {
			out = append(out, gcCandidate{listed: u, row: newGCRow(u, gcAdvice, detail)})
		}
	}
	return out
}

// deadHolderAdvice says what to do about a gateway, aux or host address
// held by dead hosts, or "" when none of its holders is dead. gc never
// releases these: a host's network still names them, and a shared one
// serves the live hosts too.
func deadHolderAdvice(u etcdstore.ListedAddr, self string, dead func(string) bool) string {
	a := u.Allocation
	if a.Kind != pool.KindGateway && a.Kind != pool.KindAux && a.Kind != pool.KindHost && a.Kind != pool.KindAnycast {
		return ""
	}
	hosts := map[string]bool{}
	if a.Host != "" {
		hosts[a.Host] = true
	}
	for h := range a.Holders {
		hosts[h] = true
	}
	var gone, living []string
	for h := range hosts {
		if h != self && dead(h) {
			gone = append(gone, h)
		} else {
			living = append(living, h)
		}
	}
	if len(gone) == 0 {
		return ""
	}
	names := (&pool.Allocation{Holders: oneEach(gone)}).HolderList()
	switch {
	case a.Kind == pool.KindAnycast:
		// Holds are per host: one host's can go without touching the others.
		return fmt.Sprintf("anycast held by dead host %s; once it is gone for good: ipamctl anycast rm %s %s --host HOST, for each", names, u.Subnet, u.Addr)
	case len(living) > 0:
		return fmt.Sprintf("%s held by dead host %s and by %s, which are not dead: left alone", a.Kind, names,
			(&pool.Allocation{Holders: oneEach(living)}).HolderList())
	case a.Kind == pool.KindHost:
		return fmt.Sprintf("host address of dead host %s; once it is gone for good: ipamctl host release %s %s --force", names, u.Subnet, u.Addr)
	}
	return fmt.Sprintf("%s of dead host %s; once it is gone for good: ipamctl release %s %s --force", a.Kind, names, u.Subnet, u.Addr)
}

func oneEach(hosts []string) map[string]int {
	m := make(map[string]int, len(hosts))
	for _, h := range hosts {
		m[h] = 1
	}
	return m
}

func newGCRow(u etcdstore.ListedAddr, result, detail string) gcAddrJSON {
	return gcAddrJSON{Subnet: u.Subnet.String(), addrJSON: newAddrJSON(u.UsedAddr), Result: result, Detail: detail}
}

func gcRows(found []gcCandidate) []gcAddrJSON {
	out := make([]gcAddrJSON, 0, len(found))
	for _, f := range found {
		out = append(out, f.row)
	}
	return out
}

func printGC(c *cli.Context, out gcJSON, nfailed int) error {
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, out); err != nil {
			return err
		}
	} else {
		t := newTable(c.App.Writer, "SUBNET", "ADDRESS", "KIND", "HOST", "MAC", "SINCE", "RESULT", "DETAIL")
		for _, a := range out.Addresses {
			t.row(a.Subnet, a.Address, a.Kind, dash(a.Host), dash(a.MAC), dash(formatTime(a.Since)), a.Result, dash(a.Detail))
		}
		if err := t.flush(); err != nil {
			return err
		}
		n := map[string]int{}
		for _, a := range out.Addresses {
			n[a.Result]++
		}
		switch {
		case n[gcExpired] > 0:
			fmt.Fprintf(c.App.ErrWriter, "%s orphaned or expired; run again with --apply to release them\n", gcCount(n[gcOrphan]+n[gcExpired], "address", "addresses"))
		case n[gcOrphan] > 0:
			fmt.Fprintf(c.App.ErrWriter, "%s orphaned; run again with --apply to release them\n", gcCount(n[gcOrphan], "address", "addresses"))
		case out.Applied:
			fmt.Fprintf(c.App.ErrWriter, "%s released\n", gcCount(n[gcReleased], "address", "addresses"))
		default:
			fmt.Fprintln(c.App.ErrWriter, "no orphaned addresses")
		}
	}
	if nfailed > 0 {
		return fmt.Errorf("%d addresses not released", nfailed)
	}
	return nil
}

// dockerInUse is every address this host's dockerd has in use, with who
// has it (dockerapi.Client.InUse).
func dockerInUse(ctx context.Context, dockerHost string) (map[netip.Addr]string, error) {
	d, err := dockerapi.New(dockerHost)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.InUse(ctx)
}

func gcCount(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
