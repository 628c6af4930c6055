package pool

import (
	"fmt"
	"maps"
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
		return State{}, fmt.Errorf("%w: %s is in use: %s", ErrUnavailable, e.Addr, u.Describe())
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
// its host when its last network lets go of it as gateway.
func releaseRule(e Entry, host string, reusableAfter time.Time) (next State, change bool, err error) {
	u := e.Used
	if u == nil {
		return State{}, false, nil
	}
	freed := freed(e, reusableAfter)
	switch u.Kind {
	case KindContainer:
		if u.Host != host {
			return State{}, false, fmt.Errorf("%w: %s is held by another host: %s; host %q may not release it",
				ErrUnavailable, e.Addr, u.Describe(), host)
		}
		return freed, true, nil
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
			return freed, true, nil
		case rest[kept.Host] == 0:
			kept.Host = firstHost(rest)
		}
		return State{Used: &kept}, true, nil
	default:
		return State{}, false, fmt.Errorf("%w: %s is a %s entry (%s); remove it with `ipamctl release`",
			ErrUnavailable, e.Addr, u.Kind, u.Describe())
	}
}

// freed is e's state once nobody holds it: free again if seeded. A
// container's address may not be claimed again before reusableAfter, so
// that LAN neighbours' ARP caches forget the old container's MAC first.
func freed(e Entry, reusableAfter time.Time) State {
	s := State{Free: e.Ranges != nil && e.Ranges.Contains(e.Addr)}
	if s.Free && e.Used != nil && e.Used.Kind == KindContainer {
		s.ReusableAfter = reusableAfter
	}
	return s
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
	return State{}, false, fmt.Errorf("%w: %s is in use: %s", ErrUnavailable, e.Addr, e.Used.Describe())
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
