package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"go4.org/netipx"
)

var (
	ruleNow   = time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	ruleDelay = time.Minute
)

// ruleEntry is 198.18.0.5 of a pool seeding 198.18.0.1-198.18.0.9 with a
// reuse delay of ruleDelay, held by u.
func ruleEntry(u *Allocation) Entry {
	var b netipx.IPSetBuilder
	b.AddRange(netipx.MustParseIPRange("198.18.0.1-198.18.0.9"))
	set, _ := b.IPSet()
	return Entry{Addr: netip.MustParseAddr("198.18.0.5"), Used: u, Ranges: set, ReuseDelay: ruleDelay}
}

func TestReservationAndAnycastRules(t *testing.T) {
	ctr := func(host, mac string) Allocation {
		return Allocation{Kind: KindContainer, Host: host, MAC: mac, Since: ruleNow}
	}
	held := func(host, mac, name string) *Allocation { a := ctr(host, mac); a.Reservation = name; return &a }
	idle := &Allocation{Kind: KindReserved, Reservation: "web", Since: ruleNow}
	anycast := func(macs map[string]string) *Allocation {
		a := &Allocation{Kind: KindAnycast, Since: ruleNow}
		for h, m := range macs {
			if a.Holders == nil {
				a.Holders, a.MACs = map[string]int{}, map[string]string{}
			}
			a.Holders[h], a.MACs[h] = 1, m
		}
		return a
	}
	gateway := &Allocation{Kind: KindGateway, Host: "a", Holders: map[string]int{"a": 1}, Since: ruleNow}
	freeLater := State{Free: true, Delay: ruleDelay}

	for _, tc := range []struct {
		name   string
		rule   func(Entry) (State, bool, error)
		used   *Allocation
		want   State
		change bool
		err    string // empty: no error
	}{
		// An explicit request (docker run --ip) of an address outside the free set.
		{"claim idle reservation", func(e Entry) (State, bool, error) { return claimRule(e, ctr("b", "m1")) },
			idle, State{Used: held("b", "m1", "web")}, true, ""},
		{"claim held reservation", func(e Entry) (State, bool, error) { return claimRule(e, ctr("b", "m1")) },
			held("a", "m9", "web"), State{}, false, `in use: container of host "a", mac m9, reserved as "web", since 2026-11-22T08:00:00Z`},
		{"claim anycast first host", func(e Entry) (State, bool, error) { return claimRule(e, ctr("a", "m1")) },
			anycast(nil), State{Used: anycast(map[string]string{"a": "m1"})}, true, ""},
		{"claim anycast another host", func(e Entry) (State, bool, error) { return claimRule(e, ctr("b", "m2")) },
			anycast(map[string]string{"a": "m1"}), State{Used: anycast(map[string]string{"a": "m1", "b": "m2"})}, true, ""},
		{"claim anycast retried", func(e Entry) (State, bool, error) { return claimRule(e, ctr("a", "m1")) },
			anycast(map[string]string{"a": "m1"}), State{}, false, ""},
		{"claim anycast twice on a host", func(e Entry) (State, bool, error) { return claimRule(e, ctr("a", "m2")) },
			anycast(map[string]string{"a": "m1"}), State{}, false, `already held on host "a" by the endpoint "m1"; each host may hold it once`},
		{"claim gone meanwhile", func(e Entry) (State, bool, error) { return claimRule(e, ctr("a", "m1")) },
			nil, State{}, false, "stopped being reserved, anycast or bound meanwhile"},

		// Releases by a host (dockerd's ReleaseAddress).
		{"release held reservation", func(e Entry) (State, bool, error) { return releaseRule(e, "a", ruleNow) },
			held("a", "m1", "web"), State{Used: idle}, true, ""},
		{"release held reservation by another host", func(e Entry) (State, bool, error) { return releaseRule(e, "b", ruleNow) },
			held("a", "m1", "web"), State{}, false, "held by another host"},
		{"release idle reservation", func(e Entry) (State, bool, error) { return releaseRule(e, "a", ruleNow) },
			idle, State{}, false, ""},
		{"release anycast one host", func(e Entry) (State, bool, error) { return releaseRule(e, "a", ruleNow) },
			anycast(map[string]string{"a": "m1", "b": "m2"}), State{Used: anycast(map[string]string{"b": "m2"})}, true, ""},
		{"release anycast last host", func(e Entry) (State, bool, error) { return releaseRule(e, "b", ruleNow) },
			anycast(map[string]string{"b": "m2"}), State{Used: anycast(nil)}, true, ""},
		{"release anycast not held", func(e Entry) (State, bool, error) { return releaseRule(e, "c", ruleNow) },
			anycast(map[string]string{"b": "m2"}), State{}, false, ""},
		{"release plain container", func(e Entry) (State, bool, error) { return releaseRule(e, "a", ruleNow) },
			ptr(ctr("a", "m1")), freeLater, true, ""},

		// ipamctl reserve and reserve rm.
		{"reserve free", func(e Entry) (State, bool, error) { return reserveRule(e, "web", ruleNow) },
			nil, State{Used: idle}, true, ""},
		{"reserve again", func(e Entry) (State, bool, error) { return reserveRule(e, "web", ruleNow) },
			idle, State{}, false, ""},
		{"reserve under another name", func(e Entry) (State, bool, error) { return reserveRule(e, "db", ruleNow) },
			idle, State{}, false, `already reserved as "web"`},
		{"reserve a container's address", func(e Entry) (State, bool, error) { return reserveRule(e, "web", ruleNow) },
			ptr(ctr("a", "m1")), State{Used: held("a", "m1", "web")}, true, ""},
		{"reserve a gateway", func(e Entry) (State, bool, error) { return reserveRule(e, "web", ruleNow) },
			gateway, State{}, false, `in use: gateway of host "a"`},
		{"reserve an anycast address", func(e Entry) (State, bool, error) { return reserveRule(e, "web", ruleNow) },
			anycast(nil), State{}, false, "in use: anycast address, not held"},
		{"unreserve idle", func(e Entry) (State, bool, error) { return unreserveRule(e) },
			idle, freeLater, true, ""},
		{"unreserve held", func(e Entry) (State, bool, error) { return unreserveRule(e) },
			held("a", "m1", "web"), State{Used: ptr(ctr("a", "m1"))}, true, ""},
		{"unreserve plain container", func(e Entry) (State, bool, error) { return unreserveRule(e) },
			ptr(ctr("a", "m1")), State{}, false, "is not reserved"},

		// ipamctl anycast add and rm.
		{"anycast free", func(e Entry) (State, bool, error) { return anycastRule(e, ruleNow) },
			nil, State{Used: anycast(nil)}, true, ""},
		{"anycast again", func(e Entry) (State, bool, error) { return anycastRule(e, ruleNow) },
			anycast(map[string]string{"a": "m1"}), State{}, false, ""},
		{"anycast a container's address", func(e Entry) (State, bool, error) { return anycastRule(e, ruleNow) },
			ptr(ctr("a", "m1")), State{}, false, `in use: container of host "a"`},
		{"anycast rm idle", func(e Entry) (State, bool, error) { return unanycastRule(e, false) },
			anycast(nil), freeLater, true, ""},
		{"anycast rm held", func(e Entry) (State, bool, error) { return unanycastRule(e, false) },
			anycast(map[string]string{"a": "m1", "b": "m2"}), State{}, false, "held by containers on hosts a,b; stop them first, or use --force"},
		{"anycast rm held forced", func(e Entry) (State, bool, error) { return unanycastRule(e, true) },
			anycast(map[string]string{"a": "m1"}), freeLater, true, ""},
		{"anycast rm of a reservation", func(e Entry) (State, bool, error) { return unanycastRule(e, true) },
			idle, State{}, false, "not an anycast address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, change, err := tc.rule(ruleEntry(tc.used))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			case change != tc.change || !reflect.DeepEqual(next, tc.want):
				t.Fatalf("got %+v (change %t), want %+v (change %t)", show(next), change, show(tc.want), tc.change)
			}
			if err != nil && strings.Contains(tc.err, "in use") && !errors.Is(err, ErrUnavailable) {
				t.Errorf("%v is not ErrUnavailable", err)
			}
		})
	}
	// An unseeded address leaves the reservation to nothing: not free.
	e := ruleEntry(idle)
	e.Addr = netip.MustParseAddr("198.18.0.200")
	if next, _, _ := unreserveRule(e); next.Free {
		t.Errorf("unreserving an unseeded address freed it")
	}
}

func ptr[T any](v T) *T { return &v }

// show renders a State with its record, for failure messages.
func show(s State) string {
	if s.Used == nil {
		return fmt.Sprintf("{Free:%t Delay:%s}", s.Free, s.Delay)
	}
	return fmt.Sprintf("%+v", *s.Used)
}
