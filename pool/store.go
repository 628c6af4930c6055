package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"go4.org/netipx"
)

// Kind says why an address is in use.
type Kind string

const (
	KindContainer Kind = "container" // an endpoint's address, exclusive
	KindGateway   Kind = "gateway"   // a host's bridge address, exclusive to that host
	KindAux       Kind = "aux"       // an --aux-address such as the LAN router, shared, counted per host
	KindHost      Kind = "host"      // a host's own LAN address, recorded by ipamctl
	KindReserved  Kind = "reserved"  // an idle reservation: only an explicit --ip request gets it
	KindAnycast   Kind = "anycast"   // one address on several hosts on purpose, once per host
)

// Known reports whether k is one of the kinds above.
func (k Kind) Known() bool {
	switch k {
	case KindContainer, KindGateway, KindAux, KindHost, KindReserved, KindAnycast:
		return true
	}
	return false
}

// Allocation is the record kept for a used address.
type Allocation struct {
	Kind     Kind   `json:"kind"`
	Host     string `json:"host"`
	MAC      string `json:"mac,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	// Holders counts references per host for the shared kinds (gateway,
	// aux): every host's `network create` requests them, every `network rm`
	// releases them. An anycast address counts each holding host once.
	Holders map[string]int `json:"holders,omitempty"`
	// MACs names, per host, the endpoint holding an anycast address (its
	// MAC, or name=<endpoint> from a driver that asks for no MAC), so a
	// retried request of that endpoint is told from a second endpoint.
	MACs map[string]string `json:"macs,omitempty"`
	// Reservation names a reserved address (`ipamctl reserve`), idle
	// (kind reserved) or held by a container; its release returns it to
	// the idle reservation instead of the free set.
	Reservation string `json:"reservation,omitempty"`
	// Sticky names the container the address is bound to, on a sticky
	// network: the next container of that name, on any host, gets it
	// again. Between containers the binding is idle (kind reserved).
	Sticky string    `json:"sticky,omitempty"`
	Since  time.Time `json:"since"`
	// Ops are the ids of the latest changes to a counted record (gateway,
	// aux, host: see counted), newest last: a change whose outcome was
	// unknown (a timeout after the commit) finds its own id here instead
	// of counting its host twice.
	Ops []string `json:"ops,omitempty"`
}

// Vacated is what remains of the record once every holder has let go: the
// idle reservation or the idle anycast address, or nil when the address
// is to be freed. now stamps the idle record.
func (a *Allocation) Vacated(now time.Time) *Allocation {
	switch {
	case a.Kind == KindAnycast:
		return &Allocation{Kind: KindAnycast, Since: now}
	case a.Reservation != "" || a.Sticky != "":
		return &Allocation{Kind: KindReserved, Reservation: a.Reservation, Sticky: a.Sticky, Since: now}
	}
	return nil
}

// IdleBinding says whether a is a sticky name's address that no container
// holds (and no reservation names): what the pool's sticky TTL expires.
func (a *Allocation) IdleBinding() bool {
	return a != nil && a.Kind == KindReserved && a.Sticky != "" && a.Reservation == ""
}

// Owner is the owner-index key of a container record, "host/id"
// (endpointID), or "" when it has none.
func (a *Allocation) Owner() string {
	if a == nil || a.Kind != KindContainer || a.endpointID() == "" {
		return ""
	}
	return a.Host + "/" + a.endpointID()
}

// endpointID tells a retried request from another endpoint of its host:
// the MAC dockerd drew for the endpoint, or, from a driver that asks for
// no MAC (dockerd's ipvlan driver refuses endpoints that have one), the
// endpoint's name, which Docker >= 29 sends and which is unique on its
// host. "" when dockerd sent neither.
func (a *Allocation) endpointID() string {
	if a.MAC == "" && a.Endpoint != "" {
		return "name=" + a.Endpoint
	}
	return a.MAC
}

// Describe names the holder for error messages and listings.
func (a *Allocation) Describe() string {
	var b strings.Builder
	switch {
	case a.Kind == KindHost && a.Host == "":
		b.WriteString("host address, not yet claimed by a host")
	case a.Kind == KindHost:
		fmt.Fprintf(&b, "host address of host %q", a.Host)
	case a.Kind == KindReserved && a.Reservation == "":
		fmt.Fprintf(&b, "address bound to name %q, not held by any container", a.Sticky)
	case a.Kind == KindReserved:
		fmt.Fprintf(&b, "address reserved as %q, not held by any container", a.Reservation)
	case a.Kind == KindAnycast && len(a.Holders) == 0:
		b.WriteString("anycast address, not held by any host")
	case a.Kind == KindAnycast:
		b.WriteString("anycast address")
	default:
		fmt.Fprintf(&b, "%s of host %q", a.Kind, a.Host)
	}
	if a.MAC != "" {
		fmt.Fprintf(&b, ", mac %s", a.MAC)
	}
	if a.Endpoint != "" {
		fmt.Fprintf(&b, ", endpoint %q", a.Endpoint)
	}
	if a.Reservation != "" && a.Kind != KindReserved {
		fmt.Fprintf(&b, ", reserved as %q", a.Reservation)
	}
	if a.Sticky != "" && (a.Kind != KindReserved || a.Reservation != "") {
		fmt.Fprintf(&b, ", bound to name %q", a.Sticky)
	}
	if len(a.Holders) > 1 || (len(a.Holders) == 1 && a.Holders[a.Host] == 0) {
		fmt.Fprintf(&b, ", held by %s", a.HolderList())
	}
	if !a.Since.IsZero() {
		fmt.Fprintf(&b, ", since %s", a.Since.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// HolderList renders Holders as "h1,h2x2" in a stable order.
func (a *Allocation) HolderList() string {
	hosts := make([]string, 0, len(a.Holders))
	for h, n := range a.Holders {
		if n > 1 {
			h = fmt.Sprintf("%sx%d", h, n)
		}
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	return strings.Join(hosts, ",")
}

// EndpointList renders MACs as "h1=02:42:…,h2=02:42:…" in host order.
func (a *Allocation) EndpointList() string {
	hosts := make([]string, 0, len(a.MACs))
	for h, mac := range a.MACs {
		hosts = append(hosts, h+"="+mac)
	}
	sort.Strings(hosts)
	return strings.Join(hosts, ",")
}

// Meta describes a pool: its subnet and the ranges seeded into its free set.
type Meta struct {
	Subnet netip.Prefix
	// Ranges are the addresses that belong in the free set whenever they
	// are not used. Releasing an address outside them (a gateway or router
	// that was never seeded) drops it instead of freeing it.
	Ranges *netipx.IPSet
	// Seeding is true from the moment ranges are added until every address
	// of them is in the free set; whoever finds it true finishes the job.
	Seeding bool
	// ReuseDelay keeps the pool's released container addresses from
	// automatic allocation for this long: one setting for every daemon
	// and ipamctl (init-range and pool set record it).
	ReuseDelay time.Duration
	// StickyTTL ends a sticky name's idle binding once no container of
	// that name has held it for this long (ipamctl gc).
	StickyTTL time.Duration
	CreatedBy string
	Created   time.Time
	Rev       int64 // store version, compared on update
}

// Entry is a consistent snapshot of one address: free, used, or neither,
// together with its pool's seeded ranges (nil when the pool does not
// exist), and the versions the store needs to apply a change only if
// nothing moved in between.
type Entry struct {
	Addr       netip.Addr
	Free       bool
	Used       *Allocation
	Ranges     *netipx.IPSet
	ReuseDelay time.Duration // the pool's
	Version    Version
}

// Version is opaque to pool: the store's revisions of the keys behind an Entry.
type Version struct{ Free, Used, Meta int64 }

// State is what an address should become.
type State struct {
	Free bool
	// Delay keeps a freed container address from automatic allocation for
	// this long (the reuse delay), timed by the store, not by any host's
	// clock; zero means at once.
	Delay time.Duration
	Used  *Allocation
}

// Claim is the answer to Store.Claim.
type Claim struct {
	Taken bool
	// Version is the taken address's entry version as the claim left it.
	Version Version
	// NoPool is true when the pool does not exist.
	NoPool bool
	// Existing is the address the requesting endpoint (the same
	// Allocation.Owner) already holds in the pool: the request is a retry.
	Existing netip.Addr
	// Holder is the address's record when it was used by someone.
	Holder *Allocation
	// Delayed is set when the address is free but still in its reuse
	// delay, and the claim did not take delayed addresses.
	Delayed bool
	// Bound is the address a's sticky name is bound to already, when
	// that kept the claim from binding it to this one.
	Bound netip.Addr
}

// Store is what the allocation rules need from storage. Every method that
// changes state is atomic; a lost race is reported as ok=false or
// Taken=false, and only a method that retries by itself (CreateMeta,
// AddRef, Seed) reports ErrContention after too many. ctx bounds each call.
// Claim, Swap, AddRef, Entry, Owned, NextReuse and Meta mark an error that
// did not reach a leader, or whose outcome is unknown, with ErrTransient;
// the caller's own deadline is not transient. Claim, Swap, CreateMeta and
// AddRef mark a change refused for want of space with ErrNoSpace.
type Store interface {
	// Meta reads a pool; ok is false when it does not exist.
	Meta(ctx context.Context, subnet netip.Prefix) (m Meta, ok bool, err error)
	// CreateMeta stores m unless the pool exists, in which case the
	// existing pool is returned with created=false. It fails with
	// ErrOverlap if m.Subnet overlaps another pool's subnet: an address
	// in two pools could be handed out twice.
	CreateMeta(ctx context.Context, m Meta) (cur Meta, created bool, err error)
	// UpdateMeta replaces old with next if old.Rev is still current; else
	// it returns the current meta and ok=false.
	UpdateMeta(ctx context.Context, old, next Meta) (cur Meta, ok bool, err error)
	// Seed adds to the free set every address of set that is neither free
	// nor used, and reports how many it added. progress may be nil.
	Seed(ctx context.Context, subnet netip.Prefix, set *netipx.IPSet, progress func(done, total uint64)) (added uint64, err error)
	// Claim moves addr from free to used, recorded as a, unless a's
	// endpoint (Allocation.Owner) already holds an address in the pool, a's
	// sticky name is bound to an address already (Bound), or addr is
	// still in its reuse delay and takeDelayed is false. A claim with a
	// sticky name binds it to addr in the same change.
	// When it does not take addr it returns who holds it and the
	// endpoint's existing address.
	Claim(ctx context.Context, subnet netip.Prefix, addr netip.Addr, a Allocation, takeDelayed bool) (Claim, error)
	// FreeSet returns the pool's free set as a copy the store keeps
	// current, loading it on first use. It may lag behind other hosts by
	// moments; Claim decides.
	FreeSet(ctx context.Context, subnet netip.Prefix) (*FreeSet, error)
	// NextReuse says how long until the first of the pool's addresses in
	// their reuse delay may be claimed by automatic allocation, as the
	// store times it; ok is false when none is in its delay.
	NextReuse(ctx context.Context, subnet netip.Prefix) (d time.Duration, ok bool, err error)
	// Binding returns the address a sticky name is bound to, if any. The
	// binding follows its record: written with it, gone with it.
	Binding(ctx context.Context, subnet netip.Prefix, name string) (netip.Addr, bool, error)
	// Owned returns the address the endpoint owner (Allocation.Owner)
	// holds, if any.
	Owned(ctx context.Context, subnet netip.Prefix, owner string) (netip.Addr, bool, error)
	// Entry reads one address.
	Entry(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (Entry, error)
	// Swap gives cur.Addr the state next if cur is still current; else it
	// returns the fresh entry and ok=false. When next makes an endpoint
	// the holder, it must hold nothing else in the pool: else Swap fails
	// with ErrUnavailable. It also requires every guard (made by this
	// store) to hold, in the same transaction: else it fails with ErrGuard.
	Swap(ctx context.Context, subnet netip.Prefix, cur Entry, next State, guards ...Guard) (fresh Entry, ok bool, err error)
	// AddRef adjusts host's reference count on the pool (RequestPool and
	// ReleasePool) and returns the new count; it never goes below zero.
	// op names the change: called again with the same op after an error,
	// it applies delta at most once.
	AddRef(ctx context.Context, subnet netip.Prefix, host string, delta int, op string) (int, error)
}

// Guard is a condition a store checks in the same transaction as a Swap,
// made by that store for what it alone can see: etcdstore's says a host is
// still as dead as gc found it. pool only passes it on.
type Guard any

// Errors; callers wrap them with the pool and address involved.
var (
	ErrUnknownPool  = errors.New("pool: no such pool")
	ErrNoFree       = errors.New("pool: no free address")
	ErrUnavailable  = errors.New("pool: address not available")
	ErrContention   = errors.New("pool: gave up after too many lost races")
	ErrNotInitiated = errors.New("pool: not initialised")
	ErrOverlap      = errors.New("pool: subnet overlaps another pool")
	ErrGuard        = errors.New("pool: a condition of the change no longer holds")
	// ErrTransient marks a store error that says the call did not reach
	// etcd's leader or its outcome is unknown (an election, a lost
	// connection), not that it was refused: the same call may succeed
	// moments later. The store wraps the original error with it.
	ErrTransient = errors.New("pool: store temporarily unavailable")
	// ErrNoSpace marks a change the store refused because it is out of
	// space (etcd's NOSPACE alarm): it did not commit, and it can commit
	// once an operator has made room.
	ErrNoSpace = errors.New("pool: store out of space")
)
