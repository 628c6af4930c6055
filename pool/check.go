package pool

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// Snapshot is a pool's whole state read at one revision, for Check.
type Snapshot struct {
	Meta Meta
	Free []netip.Addr
	// Used holds the raw records, so a malformed one can be reported
	// rather than stop the check.
	Used     map[netip.Addr][]byte
	Refs     map[string]int        // host → networks using the pool
	Owners   map[string]netip.Addr // Allocation.Owner → address (the owner index)
	Bindings map[string]netip.Addr // sticky name → address
	BadKeys  []string              // keys whose address part does not parse
}

// Anomaly is one broken invariant, with what to do about it.
type Anomaly struct {
	Address string `json:"address"`
	Problem string `json:"problem"`
	Fix     string `json:"fix"`
}

// Check verifies a pool's invariants: every seeded address is free or used
// and never both; free addresses are seeded; used records are well-formed
// and of a known kind; shared addresses' references add up; the owner
// index matches the container records, and the sticky bindings the
// records that carry their names.
func Check(s Snapshot) []Anomaly {
	var out []Anomaly
	add := func(addr any, fix, problem string, args ...any) {
		out = append(out, Anomaly{Address: fmt.Sprint(addr), Problem: fmt.Sprintf(problem, args...), Fix: fix})
	}
	subnet := s.Meta.Subnet
	for _, k := range s.BadKeys {
		add(k, "delete the key with etcdctl", "key does not name an address")
	}
	free := make(map[netip.Addr]bool, len(s.Free))
	for _, a := range s.Free {
		free[a] = true
		if !s.Meta.Ranges.Contains(a) {
			add(a, fmt.Sprintf("ipamctl init-range --subnet %s --range %s (to keep it), or delete its free key", subnet, a),
				"free but outside the seeded ranges")
		}
	}
	records := map[netip.Addr]*Allocation{}
	for a, raw := range s.Used {
		if free[a] {
			add(a, fmt.Sprintf("find its holder (ipamctl addr ls %s); if none, ipamctl release %s %s", subnet, subnet, a),
				"both free and used: it can be handed out twice")
		}
		var u Allocation
		if err := json.Unmarshal(raw, &u); err != nil {
			add(a, "rewrite or delete the used key with etcdctl", "malformed used record %q: %v", raw, err)
			continue
		}
		if !u.Kind.Known() {
			add(a, fmt.Sprintf("ipamctl release %s %s --force", subnet, a), "used record of unknown kind %q", u.Kind)
			continue
		}
		records[a] = &u
		for _, problem := range checkHolders(&u, s.Refs) {
			add(a, fmt.Sprintf("release the stale references: ipamctl release %s %s --force, then re-create the hosts' networks", subnet, a), "%s", problem)
		}
		if problem := checkMarks(&u); problem != "" {
			add(a, fmt.Sprintf("rewrite the used key with etcdctl, or ipamctl release %s %s --force and mark it again", subnet, a), "%s", problem)
		}
	}
	for _, r := range s.Meta.Ranges.Ranges() {
		for a := r.From(); a.IsValid() && !r.To().Less(a); a = a.Next() {
			if _, used := s.Used[a]; !used && !free[a] {
				add(a, fmt.Sprintf("ipamctl init-range --subnet %s --range %s", subnet, a), "lost: seeded, but neither free nor used")
			}
		}
	}
	for key, a := range s.Owners {
		if u := records[a]; u.Owner() != key {
			add(a, "delete the owner key with etcdctl", "owner index %s points here, but the record is %s", key, describe(records[a]))
		}
	}
	for a, u := range records {
		if key := u.Owner(); key != "" && s.Owners[key] != a {
			add(a, fmt.Sprintf("ipamctl release %s %s if no container holds it", subnet, a), "container record without its owner index entry")
		}
		if u.Sticky != "" && s.Bindings[u.Sticky] != a {
			add(a, fmt.Sprintf("ipamctl reserve rm %s %s (the name binds anew)", subnet, a), "bound to name %q, but the name's binding points elsewhere", u.Sticky)
		}
	}
	for name, a := range s.Bindings {
		if u := records[a]; u == nil || u.Sticky != name {
			add(a, "delete the sticky key with etcdctl", "name %q is bound here, but the record is %s", name, describe(records[a]))
		}
	}
	slices.SortFunc(out, func(x, y Anomaly) int { return compareAddrStrings(x.Address, y.Address) })
	return out
}

// checkHolders reports references that cannot be right: shared kinds with
// no holders, gateways of several hosts, and a host referencing an address
// more often than it has networks on the pool.
func checkHolders(u *Allocation, refs map[string]int) []string {
	var problems []string
	switch u.Kind {
	case KindGateway, KindAux:
		if len(u.Holders) == 0 {
			problems = append(problems, fmt.Sprintf("%s with no holders", u.Kind))
		}
	case KindContainer, KindReserved:
		if len(u.Holders) > 0 {
			problems = append(problems, fmt.Sprintf("%s with holders %s", u.Kind, u.HolderList()))
		}
	}
	if (u.Kind == KindGateway || u.Kind == KindHost) && len(u.Holders) > 1 {
		problems = append(problems, fmt.Sprintf("%s shared by hosts %s", u.Kind, u.HolderList()))
	}
	for h, n := range u.Holders {
		switch {
		case u.Kind == KindAnycast && n > 1:
			problems = append(problems, fmt.Sprintf("host %q holds the anycast address %d times; each host may hold it once", h, n))
		case n <= 0:
			problems = append(problems, fmt.Sprintf("host %q holds it %d times", h, n))
		case n > refs[h]:
			problems = append(problems, fmt.Sprintf("host %q references it %d times but has %d networks on the pool: a leaked reference", h, n, refs[h]))
		}
	}
	return problems
}

// checkMarks reports reservation and anycast fields where they do not
// belong. An idle reservation or an anycast address has no host of its
// own: its holders are counted per host, or it is held by no one.
func checkMarks(u *Allocation) string {
	switch {
	case u.Kind == KindReserved && (u.Reservation == "" && u.Sticky == "" || u.Host != "" || u.MAC != ""):
		return fmt.Sprintf("idle reservation with name %q, sticky name %q, host %q, mac %q: want a name and no holder", u.Reservation, u.Sticky, u.Host, u.MAC)
	case u.Reservation != "" && u.Kind != KindReserved && u.Kind != KindContainer:
		return fmt.Sprintf("%s reserved as %q: only containers hold reservations", u.Kind, u.Reservation)
	case u.Sticky != "" && u.Kind != KindReserved && u.Kind != KindContainer:
		return fmt.Sprintf("%s bound to name %q: only containers are", u.Kind, u.Sticky)
	case u.Kind == KindAnycast && u.Host != "":
		return fmt.Sprintf("anycast address owned by host %q: anycast holders are counted per host", u.Host)
	case u.Kind != KindAnycast && len(u.MACs) > 0:
		return fmt.Sprintf("%s with per-host endpoints: only anycast addresses have them", u.Kind)
	}
	for h := range u.MACs {
		if u.Holders[h] == 0 {
			return fmt.Sprintf("anycast endpoint of host %q that does not hold it", h)
		}
	}
	return ""
}

func describe(u *Allocation) string {
	if u == nil {
		return "missing"
	}
	return u.Describe()
}

// compareAddrStrings orders addresses numerically, other strings after.
func compareAddrStrings(x, y string) int {
	a, errA := netip.ParseAddr(x)
	b, errB := netip.ParseAddr(y)
	switch {
	case errA == nil && errB == nil:
		return a.Compare(b)
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	if x < y {
		return -1
	}
	if x > y {
		return 1
	}
	return 0
}
