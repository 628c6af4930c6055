package pool

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// The rules below are pure: given an address's current entry they return
// what it should become, or why not. Pools applies them with one
// compare-and-swap each, re-applying them after a lost race.

// holdRule adds host's reference to a shared address of kind (gateway or
// aux). A gateway may also be a host address recorded by `ipamctl
// host-range`: the host that has it configured (local) claims it when it
// first uses it as its gateway, and no other host may then use it: two
// hosts with one IP is the outage this prevents.
func holdRule(e Entry, kind Kind, host string, local bool, now time.Time) (State, error) {
	u := e.Used
	if u == nil {
		return State{Used: &Allocation{Kind: kind, Host: host, Holders: map[string]int{host: 1}, Since: now}}, nil
	}
	claimsHost := kind == KindGateway && u.Kind == KindHost
	if u.Kind != kind && !claimsHost {
		return State{}, inUse(e.Addr, u)
	}
	if kind == KindGateway && u.Host != host && !(claimsHost && u.Host == "") {
		return State{}, fmt.Errorf("%w: %s is the %s; each host's gateway must be its own bridge address",
			ErrUnavailable, e.Addr, u.Describe())
	}
	if claimsHost && u.Host == "" && !local {
		return State{}, fmt.Errorf("%w: %s is a recorded host address that host %q does not have; each host's gateway must be its own bridge address",
			ErrUnavailable, e.Addr, host)
	}
	next := *u
	next.Holders = maps.Clone(u.Holders)
	if next.Holders == nil {
		next.Holders = map[string]int{}
	}
	next.Holders[host]++
	if claimsHost && next.Host == "" {
		next.Host, next.Since = host, now
	}
	return State{Used: &next}, nil
}

// releaseRule drops host's hold on e. An address returns to the free set
// only if it lies in the pool's seeded ranges. A host address stays with
// its host when its last network lets go of it as gateway; a reserved
// address returns to its idle reservation; an anycast address stays
// anycast.
func releaseRule(e Entry, host string, now time.Time) (next State, change bool, err error) {
	u := e.Used
	if u == nil {
		return State{}, false, nil
	}
	switch u.Kind {
	case KindContainer:
		if u.Host != host {
			return State{}, false, fmt.Errorf("%w: %s is held by another host: %s; host %q may not release it",
				ErrUnavailable, e.Addr, u.Describe(), host)
		}
		return freed(e, now), true, nil
	case KindReserved:
		return State{}, false, nil // idle: nothing of this host's to release
	case KindAnycast:
		if u.Holders[host] == 0 {
			return State{}, false, nil
		}
		kept := *u
		kept.Holders, kept.MACs = without(u.Holders, host), without(u.MACs, host)
		return State{Used: &kept}, true, nil
	case KindGateway, KindAux, KindHost:
		if u.Holders[host] == 0 {
			return State{}, false, nil
		}
		rest := maps.Clone(u.Holders)
		if rest[host]--; rest[host] == 0 {
			delete(rest, host)
		}
		kept := *u
		kept.Holders = rest
		switch {
		case u.Kind == KindHost:
			if len(rest) == 0 {
				kept.Holders = nil
			}
			return State{Used: &kept}, true, nil
		case len(rest) == 0:
			return freed(e, now), true, nil
		case rest[kept.Host] == 0:
			kept.Host = firstHost(rest)
		}
		return State{Used: &kept}, true, nil
	default:
		return State{}, false, fmt.Errorf("%w: %s is a %s entry (%s); remove it with `ipamctl release`",
			ErrUnavailable, e.Addr, u.Kind, u.Describe())
	}
}

// without returns m less key, nil when nothing is left.
func without[V any](m map[string]V, key string) map[string]V {
	rest := maps.Clone(m)
	delete(rest, key)
	if len(rest) == 0 {
		return nil
	}
	return rest
}

// freed is e's state once nobody holds it: the idle reservation or anycast
// address it was (stamped now), else free again if seeded. A container's
// address is kept from automatic allocation for the pool's reuse delay, so
// that LAN neighbours' ARP caches forget the old container's MAC first; an
// idle reservation needs no delay, as only an explicit request takes it.
func freed(e Entry, now time.Time) State {
	if e.Used != nil {
		if idle := e.Used.Vacated(now); idle != nil {
			return State{Used: idle}
		}
	}
	s := State{Free: seeded(e)}
	if s.Free && e.Used != nil && e.Used.Kind == KindContainer {
		s.Delay = e.ReuseDelay
	}
	return s
}

func seeded(e Entry) bool { return e.Ranges != nil && e.Ranges.Contains(e.Addr) }

// counted says whether u counts references per host (gateway, aux, a host
// address in use as gateway): a change to it is not idempotent, so it
// carries an op id (Allocation.Ops). An anycast address's holders are a
// set, and a container's record is found by its owner index.
func counted(u *Allocation) bool {
	return u != nil && (u.Kind == KindGateway || u.Kind == KindAux || u.Kind == KindHost)
}

// maxOps bounds Allocation.Ops: a change that failed looks for its id at
// once, before more than a few other changes can have pushed it out.
const maxOps = 8

// withOp returns u with op as its latest change.
func withOp(u *Allocation, op string) *Allocation {
	next := *u
	next.Ops = append(slices.Clone(u.Ops[max(len(u.Ops)-maxOps+1, 0):]), op)
	return &next
}

// took says whether a swap from e to next, whose outcome is unknown, took
// effect, judging by fresh, read after it. false means: apply the rule
// again to fresh. That is right when nothing changed (it did not commit),
// and for every change but two, which are idempotent (a reservation, an
// adopted record, an anycast holder, a host address): applied again after
// a commit, their rule finds nothing to do. The two are a count, which
// finds its op id, and a removal, which finds the record gone or replaced.
func took(e, fresh Entry, next State, op string) bool {
	switch {
	case fresh.Version == e.Version:
		return false
	case counted(next.Used):
		return fresh.Used != nil && slices.Contains(fresh.Used.Ops, op)
	case next.Used == nil && e.Used != nil:
		return !sameRecord(fresh.Used, e.Used)
	}
	return false
}

// sameRecord says whether u is the record a, not merely one of the same
// endpoint: a new claim stamps a new time.
func sameRecord(u, a *Allocation) bool {
	return u != nil && u.Kind == a.Kind && u.Host == a.Host && u.MAC == a.MAC && u.Endpoint == a.Endpoint && u.Since.Equal(a.Since)
}

// claimRule gives an address that automatic allocation never hands out to
// the endpoint a that asked for it by address (`docker run --ip`): an idle
// reservation becomes a's container record, keeping its name; an anycast
// address gains a's host as a holder. Each host holds an anycast address
// at most once, so that dockerd's release (which names only the address)
// is unambiguous; the same endpoint asking again is a retry and changes
// nothing.
func claimRule(e Entry, a Allocation) (State, bool, error) {
	u := e.Used
	switch {
	case u == nil:
		return State{}, false, fmt.Errorf("%w: %s %w", ErrUnavailable, e.Addr, errUnbound)
	case sameEndpoint(u, a):
		return State{}, false, nil // the reservation is a's already: a retry
	case u.Kind == KindReserved:
		held := a
		held.Reservation, held.Sticky = u.Reservation, u.Sticky
		return State{Used: &held}, true, nil
	case u.Kind != KindAnycast:
		return State{}, false, inUse(e.Addr, u)
	}
	if id, holds := u.MACs[a.Host]; holds || u.Holders[a.Host] > 0 {
		if holds && id == a.endpointID() {
			return State{}, false, nil
		}
		return State{}, false, fmt.Errorf("%w: anycast address %s is already held on host %q by the endpoint %q; each host may hold it once",
			ErrUnavailable, e.Addr, a.Host, id)
	}
	next := *u
	next.Holders, next.MACs = maps.Clone(u.Holders), maps.Clone(u.MACs)
	if next.Holders == nil {
		next.Holders, next.MACs = map[string]int{}, map[string]string{}
	}
	next.Holders[a.Host], next.MACs[a.Host] = 1, a.endpointID()
	return State{Used: &next}, true, nil
}

// claimVerdict is what a Claim's answer means for the request.
type claimVerdict int

const (
	claimTaken      claimVerdict = iota // the address is the request's now
	claimRetried                        // the endpoint holds it already: an earlier answer was lost
	claimBound                          // its sticky name is bound to another address meanwhile
	claimNoPool                         // the pool does not exist
	claimHoldsOther                     // the endpoint holds another address than the one it named
	claimByRule                         // reserved or anycast: claimRule decides
	claimHeld                           // someone else holds it
	claimDelayed                        // free, in its reuse delay
	claimGone                           // neither free nor used: a lost race, or never seeded
)

// verdictOf reads c, the answer to a claim of addr; named says the request
// named addr (--ip), so that only that address is its own.
func verdictOf(c Claim, addr netip.Addr, named bool) claimVerdict {
	switch {
	case c.Taken:
		return claimTaken
	case c.Existing.IsValid() && (!named || c.Existing == addr):
		return claimRetried
	case c.Bound.IsValid():
		return claimBound
	case c.NoPool:
		return claimNoPool
	case c.Existing.IsValid():
		return claimHoldsOther
	case c.Holder != nil && (c.Holder.Kind == KindReserved || c.Holder.Kind == KindAnycast):
		return claimByRule
	case c.Holder != nil:
		return claimHeld
	case c.Delayed:
		return claimDelayed
	}
	return claimGone
}

// adoptRule makes a, a retried request, the owner of the container record
// its endpoint already holds: the record takes a's time, so the background
// undo of an earlier failed attempt (which compares the time) leaves it.
func adoptRule(e Entry, a Allocation) (State, bool, error) {
	switch {
	case !sameEndpoint(e.Used, a):
		return State{}, false, fmt.Errorf("%w: %s %w", ErrUnavailable, e.Addr, errChangedHands)
	case e.Used.Since.Equal(a.Since):
		return State{}, false, nil // this request's own earlier attempt
	}
	next := *e.Used
	next.Since = a.Since
	return State{Used: &next}, true, nil
}

// undoRule frees what a claim that failed with an error may have taken:
// the record of a's endpoint, if it is still that very attempt's (a retry
// that adopted it stamped it anew). It was never used: no reuse delay.
func undoRule(e Entry, a Allocation, now time.Time) (State, bool, error) {
	if !sameRecord(e.Used, &a) {
		return State{}, false, nil
	}
	e.ReuseDelay = 0
	return freed(e, now), true, nil
}

// errUnbound: the reservation, anycast mark or sticky binding a request
// named ended meanwhile.
var errUnbound = errors.New("stopped being reserved, anycast or bound meanwhile; request it again")

// errChangedHands: the address a retried request's endpoint held is no
// longer its own (the undo of its failed attempt freed it); the request
// claims afresh.
var errChangedHands = errors.New("changed hands while being re-requested")

// sameEndpoint says whether u is held by a's endpoint; an endpoint with
// neither MAC nor name is nobody's to recognise.
func sameEndpoint(u *Allocation, a Allocation) bool {
	return indexed(a) && u.Owner() == a.Owner()
}

// listedRule releases e for gc as its holder's release would, if its
// record is still the one listed at revision rev.
func listedRule(e Entry, rev int64, now time.Time) (State, bool) {
	if e.Used == nil || e.Version.Used != rev {
		return State{}, false
	}
	return freed(e, now), true
}

// expireRule frees e, an idle sticky binding, if its record is still the
// one listed at revision rev; its binding goes with the record.
func expireRule(e Entry, rev int64) (State, bool) {
	if !e.Used.IdleBinding() || e.Version.Used != rev {
		return State{}, false
	}
	return State{Free: seeded(e)}, true
}

// evictRule is the operator's release of e (in subnet): see Pools.Evict.
func evictRule(e Entry, subnet netip.Prefix, force bool, only Kind, now time.Time) (State, bool, error) {
	u := e.Used
	switch {
	case u == nil:
		return State{}, false, nil
	case only != "" && u.Kind != only:
		return State{}, false, fmt.Errorf("%s is not a %s address: it is the %s", e.Addr, only, u.Describe())
	case u.Kind == KindReserved:
		return State{}, false, fmt.Errorf("%s is the %s; to free it: ipamctl reserve rm %s %s", e.Addr, u.Describe(), subnet, e.Addr)
	case u.Kind == KindAnycast && len(u.Holders) == 0:
		return State{}, false, fmt.Errorf("%s is an anycast address held by no container; to free it: ipamctl anycast rm %s %s", e.Addr, subnet, e.Addr)
	case u.Kind == KindAnycast && !force:
		return State{}, false, fmt.Errorf("%s is an anycast address held by containers on hosts %s; stop them, or use --force", e.Addr, u.HolderList())
	case len(u.Holders) > 0 && !force:
		return State{}, false, fmt.Errorf("%s is the %s of hosts %s, whose networks still use it; remove those networks, or use --force",
			e.Addr, u.Kind, u.HolderList())
	}
	return freed(e, now), true, nil
}

// reserveRule takes e out of automatic allocation under name. A container
// holding e keeps it: its record gains the name, so that its release
// leaves the reservation behind. Reserving again under the same name is a
// no-op.
func reserveRule(e Entry, name string, now time.Time) (State, bool, error) {
	u := e.Used
	switch {
	case u == nil:
		return State{Used: &Allocation{Kind: KindReserved, Reservation: name, Since: now}}, true, nil
	case u.Reservation == name:
		return State{}, false, nil
	case u.Reservation != "":
		return State{}, false, fmt.Errorf("%w: %s is already reserved as %q; remove that reservation first (ipamctl reserve rm)",
			ErrUnavailable, e.Addr, u.Reservation)
	case u.Kind == KindContainer:
		held := *u
		held.Reservation = name
		return State{Used: &held}, true, nil
	}
	return State{}, false, inUse(e.Addr, u)
}

// unreserveRule ends e's reservation: an idle one is freed (if seeded),
// a held one stays with its container, whose release then frees it.
func unreserveRule(e Entry) (State, bool, error) {
	u := e.Used
	switch {
	case u == nil || u.Reservation == "" && u.Sticky == "":
		return State{}, false, fmt.Errorf("%s is not reserved nor bound to a name (see ipamctl reserve ls, addr ls)", e.Addr)
	case u.Kind == KindReserved:
		return State{Free: seeded(e), Delay: e.ReuseDelay}, true, nil
	}
	held := *u
	held.Reservation, held.Sticky = "", ""
	return State{Used: &held}, true, nil
}

// anycastRule marks e as an anycast address; marking it again is a no-op.
func anycastRule(e Entry, now time.Time) (State, bool, error) {
	switch {
	case e.Used == nil:
		return State{Used: &Allocation{Kind: KindAnycast, Since: now}}, true, nil
	case e.Used.Kind == KindAnycast:
		return State{}, false, nil
	}
	return State{}, false, inUse(e.Addr, e.Used)
}

// unanycastRule frees an anycast address (if seeded); one that containers
// still hold needs force.
func unanycastRule(e Entry, force bool) (State, bool, error) {
	u := e.Used
	switch {
	case u == nil || u.Kind != KindAnycast:
		return State{}, false, fmt.Errorf("%s is not an anycast address (see ipamctl anycast ls)", e.Addr)
	case len(u.Holders) > 0 && !force:
		return State{}, false, fmt.Errorf("anycast address %s is held by containers on hosts %s; stop them first, or use --force",
			e.Addr, u.HolderList())
	}
	return State{Free: seeded(e), Delay: e.ReuseDelay}, true, nil
}

// hostAddrRule records e as a host address not yet claimed by any host.
// Recording it again is a no-op; anything else using it is a conflict.
func hostAddrRule(e Entry, now time.Time) (State, bool, error) {
	switch {
	case e.Used == nil:
		return State{Used: &Allocation{Kind: KindHost, Since: now}}, true, nil
	case e.Used.Kind == KindHost:
		return State{}, false, nil
	}
	return State{}, false, inUse(e.Addr, e.Used)
}

func firstHost(holders map[string]int) string {
	first := ""
	for h := range holders {
		if first == "" || h < first {
			first = h
		}
	}
	return first
}
