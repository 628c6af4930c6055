package pool

import (
	"context"
	"fmt"
	"net/netip"
)

// Pending is a release the store refused for want of space (ErrNoSpace).
// dockerd takes a failed release as final and never repeats it, so the
// daemon keeps it and applies it once the store has room. It names the
// record it was for, so that applied late it changes that record or
// nothing, never a later holder's.
type Pending struct {
	Subnet netip.Prefix `json:"subnet"`
	Addr   netip.Addr   `json:"addr"`
	Record Allocation   `json:"record"`
}

// PendingRelease returns what this host's release of addr would change: after a
// release refused with ErrNoSpace, the record that release was for (a
// refusal for space commits nothing, and the store, out of space, takes no
// change that would hand the address to anyone). ok is false when there
// is nothing of this host's to release.
func (p *Pools) PendingRelease(ctx context.Context, subnet netip.Prefix, addr netip.Addr) (r Pending, ok bool, err error) {
	e, err := p.store.Entry(ctx, subnet, addr)
	if err != nil {
		return Pending{}, false, fmt.Errorf("reading %s in pool %s: %w", addr, subnet, err)
	}
	if e.Ranges == nil {
		return Pending{}, false, fmt.Errorf("%w: %s", ErrUnknownPool, subnet)
	}
	_, change, err := releaseRule(e, p.cfg.Host, p.now().UTC())
	if err != nil || !change {
		return Pending{}, false, err
	}
	return Pending{Subnet: subnet, Addr: addr, Record: *e.Used}, true, nil
}

// ReleasePending applies r: it releases r.Addr if it still holds r's
// record, and reports whether it did. released=false with no error means
// the record is gone (released meanwhile, or freed by an operator).
func (p *Pools) ReleasePending(ctx context.Context, r Pending) (released bool, err error) {
	err = p.change(ctx, r.Subnet, r.Addr, func(e Entry) (State, bool, error) {
		if !r.holds(e.Used) {
			released = false
			return State{}, false, nil
		}
		next, change, err := releaseRule(e, p.cfg.Host, p.now().UTC())
		released = change
		return next, change, err
	})
	return released, err
}

// holds says whether u is still r's record. A container record is that
// very claim (sameRecord). A shared record (gateway, aux, host, anycast)
// names as Host its first holder, which changes as other hosts let go;
// its kind and time stay until it is freed and made anew.
func (r Pending) holds(u *Allocation) bool {
	if r.Record.Kind == KindContainer {
		return sameRecord(u, &r.Record)
	}
	return u != nil && u.Kind == r.Record.Kind && u.Since.Equal(r.Record.Since)
}
