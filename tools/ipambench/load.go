package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/talkingdata/ipam/internal/pluginclient"
)

// opFunc is one cycle of worker w: take an address and give it back. lat is the time the
// taking took (RequestAddress, or the baseline's claim); dup says the address was granted while
// another worker held it.
type opFunc func(ctx context.Context, w int) (lat time.Duration, dup bool, err error)

// roundResult is one round of one side at one point.
type roundResult struct {
	Ops, Errors, Dups int64
	Elapsed           time.Duration
	Lat               []time.Duration // sorted
	FirstErr          string
}

// measure runs op from workers goroutines for d. Each worker first runs one cycle that is not
// counted (it opens its connection, as a long-running dockerd would have), then all start
// together; elapsed ends with the last worker's last cycle.
func measure(ctx context.Context, workers int, d time.Duration, op opFunc) roundResult {
	var (
		res   roundResult
		mu    sync.Mutex
		ready sync.WaitGroup
		wg    sync.WaitGroup
	)
	start := make(chan struct{})
	var begin time.Time
	ready.Add(workers)
	for w := range workers {
		wg.Go(func() {
			_, _, werr := op(ctx, w) // warm-up
			ready.Done()
			<-start
			var lats []time.Duration
			var ops, errs, dups int64
			var first string
			deadline := begin.Add(d)
			if werr != nil {
				// Counted, and no more: a call that failed here most likely timed out, and
				// retrying for the whole round would only stretch it.
				errs, first, deadline = 1, "warm-up: "+werr.Error(), time.Time{}
			}
			for time.Now().Before(deadline) && ctx.Err() == nil {
				lat, dup, err := op(ctx, w)
				switch {
				case err != nil:
					errs++
					if first == "" {
						first = err.Error()
					}
					time.Sleep(time.Millisecond) // an erroring peer must not spin
				default:
					ops++
					lats = append(lats, lat)
				}
				if dup {
					dups++
				}
			}
			mu.Lock()
			res.Ops, res.Errors, res.Dups = res.Ops+ops, res.Errors+errs, res.Dups+dups
			res.Lat = append(res.Lat, lats...)
			if res.FirstErr == "" {
				res.FirstErr = first
			}
			mu.Unlock()
		})
	}
	ready.Wait()
	begin = time.Now()
	close(start)
	wg.Wait()
	res.Elapsed = time.Since(begin)
	slices.Sort(res.Lat)
	return res
}

// held is who holds which address, to catch an address granted twice.
type held struct {
	mu sync.Mutex
	m  map[netip.Addr]holder
}

type holder struct {
	op        uint64
	releasing bool // from ReleaseAddress sent until answered: a new grant may be legitimate
}

func newHeld() *held { return &held{m: map[netip.Addr]holder{}} }

// grant records op as the holder and reports a duplicate if someone else held it.
func (h *held) grant(a netip.Addr, op uint64) (dup bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur, ok := h.m[a]
	h.m[a] = holder{op: op}
	return ok && !cur.releasing
}

func (h *held) releasing(a netip.Addr, op uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.m[a]; ok && cur.op == op {
		h.m[a] = holder{op: op, releasing: true}
	}
}

// len is how many addresses are held or being released.
func (h *held) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

func (h *held) drop(a netip.Addr, op uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.m[a]; ok && cur.op == op {
		delete(h.m, a)
	}
}

// oursLoad is the plugin side: worker w goes to daemon w mod len(daemons), as containers of
// one Docker network spread over hosts.
type oursLoad struct {
	r       *runner
	p       *benchPool
	daemons []*daemon
	held    *held
}

func (l *oursLoad) op(ctx context.Context, w int) (time.Duration, bool, error) {
	d := l.daemons[w%len(l.daemons)]
	id := l.r.macs.Add(1)
	a, lat, dup, err := l.take(ctx, d, id)
	if err != nil {
		return lat, false, err
	}
	return lat, dup, l.give(ctx, d, a, id)
}

// take asks d for an address for a new endpoint (the MAC of id), as `docker run` does, and
// notes id as its holder; dup says someone else held it.
func (l *oursLoad) take(ctx context.Context, d *daemon, id uint64) (a netip.Addr, lat time.Duration, dup bool, err error) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	res, err := d.client.RequestAddress(cctx, pluginclient.RequestAddressRequest{PoolID: l.p.poolID,
		Options: map[string]string{pluginclient.OptMAC: macOf(id)}})
	cancel()
	lat = time.Since(start)
	if err != nil {
		return a, lat, false, fmt.Errorf("RequestAddress on %s: %w", d.id, err)
	}
	if a, err = l.answer(res.Address); err != nil {
		return a, lat, false, fmt.Errorf("RequestAddress on %s: %w", d.id, err)
	}
	return a, lat, l.held.grant(a, id), nil
}

// give releases a, held by id, through d.
func (l *oursLoad) give(ctx context.Context, d *daemon, a netip.Addr, id uint64) error {
	l.held.releasing(a, id)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	err := d.client.ReleaseAddress(cctx, l.p.poolID, a.String())
	cancel()
	if err != nil {
		return fmt.Errorf("ReleaseAddress %s on %s: %w", a, d.id, err) // stays "releasing": unknown
	}
	l.held.drop(a, id)
	return nil
}

// answer checks a RequestAddress answer: the address with the pool's prefix length, inside it.
func (l *oursLoad) answer(s string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Bits() != l.p.net.Subnet.Bits() || !l.p.net.Subnet.Contains(p.Addr()) {
		return netip.Addr{}, fmt.Errorf("answer %q is not an address of %s", s, l.p.net.Subnet)
	}
	return p.Addr(), nil
}

// exhaustedOp asks a full pool for an address: the answer must be the "no free address" error.
// An address is an error too (the pool was not full); it is given back.
func (l *oursLoad) exhaustedOp(ctx context.Context, w int) (time.Duration, bool, error) {
	d := l.daemons[w%len(l.daemons)]
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	res, err := d.client.RequestAddress(cctx, pluginclient.RequestAddressRequest{PoolID: l.p.poolID,
		Options: map[string]string{pluginclient.OptMAC: macOf(l.r.macs.Add(1))}})
	cancel()
	lat := time.Since(start)
	var ce *pluginclient.CallError
	switch {
	case err == nil:
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		if a, aerr := l.answer(res.Address); aerr == nil {
			_ = d.client.ReleaseAddress(cctx, l.p.poolID, a.String()) // best effort: the round failed anyway
		}
		return lat, false, fmt.Errorf("RequestAddress on %s: got %s from a pool that should be full", d.id, res.Address)
	case errors.As(err, &ce) && !ce.Transport && strings.Contains(ce.Msg, "no free address"):
		return lat, false, nil
	}
	return lat, false, fmt.Errorf("RequestAddress on %s: want \"no free address\", got: %w", d.id, err)
}

// floorOp is a plugin call that does no etcd work: what the protocol itself costs (HTTP over
// the unix socket, JSON, the daemon's handler), the floor under every RequestAddress.
func (l *oursLoad) floorOp(ctx context.Context, w int) (time.Duration, bool, error) {
	d := l.daemons[w%len(l.daemons)]
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := d.client.GetDefaultAddressSpaces(cctx); err != nil {
		return time.Since(start), false, fmt.Errorf("GetDefaultAddressSpaces on %s: %w", d.id, err)
	}
	return time.Since(start), false, nil
}

// macOf makes the id-th MAC of this run: locally administered, unique per request, as every
// new endpoint has its own.
func macOf(id uint64) string {
	return fmt.Sprintf("02:42:%02x:%02x:%02x:%02x", byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
}

func (r *runner) nextMAC() string { return macOf(r.macs.Add(1)) }

// stats are one side's figures at one point: medians over its rounds.
type stats struct {
	Rate          float64 // cycles per second
	P50, P99, Max time.Duration
	Ops           int64
	Errors, Dups  int64 // summed over rounds
	FirstErr      string
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func summarize(rounds []roundResult) stats {
	var s stats
	var rates []float64
	var p50, p99, mx []time.Duration
	for _, r := range rounds {
		s.Ops += r.Ops
		s.Errors += r.Errors
		s.Dups += r.Dups
		if s.FirstErr == "" {
			s.FirstErr = r.FirstErr
		}
		rates = append(rates, float64(r.Ops)/r.Elapsed.Seconds())
		p50, p99 = append(p50, quantile(r.Lat, 0.50)), append(p99, quantile(r.Lat, 0.99))
		if len(r.Lat) > 0 {
			mx = append(mx, r.Lat[len(r.Lat)-1])
		}
	}
	s.Rate, s.P50, s.P99, s.Max = median(rates), median(p50), median(p99), median(mx)
	return s
}

func median[T int64 | float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
