package harness

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Phase is one stretch of load with its own faults, injected one after the other with
// Config.FaultGap of load before each and after the last. Phases run one after the other, each
// with its own workers, so every call belongs to exactly one phase.
type Phase struct {
	Name string
	// Ops is the number of logical operations to complete at least in this phase; the load
	// also goes on until every fault was injected and undone.
	Ops int
	// Faults are faultKinds' names, in order.
	Faults []string
	// MaxP99, if set, fails the phase when the 99th percentile of its calls took longer.
	MaxP99 time.Duration
}

// failuresAllowed: a phase whose faults include one that dockerd sees as failed requests (a
// plugin's dead socket). Any other phase has a budget of 0 failed requests: etcd's own faults
// must be ridden out by the plugins.
func (p Phase) failuresAllowed() bool {
	return slices.ContainsFunc(p.Faults, func(k string) bool { return faultKinds[k].failuresAllowed })
}

// String is the phase as ParsePhase reads it.
func (p Phase) String() string {
	var faults []string
	for i := 0; i < len(p.Faults); {
		n := 1
		for i+n < len(p.Faults) && p.Faults[i+n] == p.Faults[i] {
			n++
		}
		f := p.Faults[i]
		if n > 1 {
			f += "*" + strconv.Itoa(n)
		}
		faults = append(faults, f)
		i += n
	}
	s := fmt.Sprintf("%s:%d:%s", p.Name, p.Ops, strings.Join(faults, ","))
	if p.MaxP99 > 0 {
		s += ":" + p.MaxP99.String()
	}
	return s
}

// ParsePhase reads NAME:OPS:FAULTS[:MAXP99], FAULTS a comma-separated list of fault kinds where
// KIND*N is N of them: "leader-kills:4000:leader-kill*3:3s".
func ParsePhase(s string) (Phase, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 3 || len(parts) > 4 || parts[0] == "" {
		return Phase{}, fmt.Errorf("phase %q: want NAME:OPS:FAULTS[:MAXP99]", s)
	}
	p := Phase{Name: parts[0]}
	var err error
	if p.Ops, err = strconv.Atoi(parts[1]); err != nil || p.Ops < 0 {
		return Phase{}, fmt.Errorf("phase %q: operations %q: not a count", s, parts[1])
	}
	for _, f := range strings.Split(parts[2], ",") {
		if f == "" {
			continue
		}
		kind, times, found := strings.Cut(f, "*")
		n := 1
		if found {
			if n, err = strconv.Atoi(times); err != nil || n < 1 {
				return Phase{}, fmt.Errorf("phase %q: %q: not a count of faults", s, f)
			}
		}
		if _, ok := faultKinds[kind]; !ok {
			return Phase{}, fmt.Errorf("phase %q: unknown fault %q (known: %s)", s, kind, strings.Join(FaultKinds(), ", "))
		}
		for range n {
			p.Faults = append(p.Faults, kind)
		}
	}
	if len(parts) == 4 {
		if p.MaxP99, err = time.ParseDuration(parts[3]); err != nil {
			return Phase{}, fmt.Errorf("phase %q: p99 bound: %w", s, err)
		}
	}
	return p, nil
}

// FaultKinds lists the fault kinds a phase can name, sorted.
func FaultKinds() []string {
	var ks []string
	for k := range faultKinds {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// PhaseResult is what one phase saw.
type PhaseResult struct {
	Phase
	FailuresAllowed bool
	Ops, Calls      int64
	FailedCalls     int           // calls answered with an error, or not at all
	P50, P99, Max   time.Duration // of every call in the phase, RequestAddress and ReleaseAddress
	Latency         string        // the same per method
	ErrorKinds      map[string]int
	// Faults says per fault what it was, when, what was seen meanwhile (elections,
	// recovery) and the calls it touched.
	Faults []string
	// Recoveries are, per restarted member, the time from it being healthy to the first
	// plugin transaction it served.
	Recoveries []time.Duration
	// FailedEvidence is one line per failed call in a phase with a budget of 0: its error,
	// and when it was sent relative to the nearest fault.
	FailedEvidence []string
	Duration       time.Duration
}

// Line is the phase's summary.
func (p *PhaseResult) Line() string {
	budget := "budget 0"
	if p.FailuresAllowed {
		budget = "failures allowed"
	}
	s := fmt.Sprintf("phase %s: operations=%d calls=%d failed-calls=%d (%s) p50=%s p99=%s max=%s faults=%d/%d duration=%s",
		p.Name, p.Ops, p.Calls, p.FailedCalls, budget, p.P50.Round(100*time.Microsecond), p.P99.Round(time.Millisecond),
		p.Max.Round(time.Millisecond), len(p.Faults), len(p.Phase.Faults), p.Duration.Round(100*time.Millisecond))
	if p.MaxP99 > 0 {
		s += fmt.Sprintf(" (p99 bound %s)", p.MaxP99)
	}
	for _, d := range p.Recoveries {
		s += fmt.Sprintf(" restart-recovery=%s", d.Round(time.Millisecond))
	}
	return s
}

// call is one HTTP call to a plugin under load.
type call struct {
	method string
	e      *endpoint
	sent   time.Time
	took   time.Duration
	err    error
}

// phaseRun is a phase under way.
type phaseRun struct {
	Phase
	start      time.Time
	opsAtStart int64
	calls      []call         // under runner.mu
	faults     []*faultRecord // the fault goroutine's, read once it is done
}

// record keeps a call of the phase under way; the verification's calls belong to none.
func (r *runner) record(method string, e *endpoint, sent time.Time, err error) {
	c := call{method: method, e: e, sent: sent, took: time.Since(sent), err: err}
	r.mu.Lock()
	if r.cur != nil {
		r.cur.calls = append(r.cur.calls, c)
	}
	r.mu.Unlock()
}

// runPhase runs the workers and ph's faults until ph's operations are done and every fault
// was injected and undone, then stops the workers and waits until every member and plugin
// runs again.
func (r *runner) runPhase(ctx context.Context, ph *phaseRun) error {
	r.stopLoad.Store(false)
	ph.start, ph.opsAtStart = time.Now(), r.ops.Load()
	r.mu.Lock()
	r.cur = ph
	r.mu.Unlock()
	r.logf("phase %s: %d workers, at least %d operations, faults: %s", ph.Name, r.cfg.Concurrency, ph.Ops, strings.Join(ph.Faults, " "))
	faultCtx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	faultsDone := make(chan struct{})
	go func() { defer close(faultsDone); r.inject(faultCtx, ph) }()
	var workers sync.WaitGroup
	for w := 0; w < r.cfg.Concurrency; w++ {
		workers.Add(1)
		go func() { defer workers.Done(); r.worker(ctx, w) }()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	lastLog := time.Now()
	for !r.stopLoad.Load() {
		select {
		case <-ctx.Done():
			r.stopLoad.Store(true)
		case <-tick.C:
		}
		ops := r.ops.Load() - ph.opsAtStart
		select {
		case <-faultsDone:
			if ops >= int64(ph.Ops) {
				r.stopLoad.Store(true)
			}
		default:
		}
		if time.Since(ph.start) > r.cfg.MaxDuration {
			r.stopLoad.Store(true)
			r.fail("phase %s did not complete within %s: %d operations", ph.Name, r.cfg.MaxDuration, ops)
		}
		if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			r.cfg.Logf("%s progress: phase %s: %d operations, %d errors returned, %d transport errors",
				stamp(time.Now()), ph.Name, ops, r.errs.Load(), r.terrs.Load())
		}
	}
	tick.Stop()
	// The faults stop first (a member or plugin down is restarted, a frozen one thawed), so
	// that the operations in flight can finish.
	stopFaults()
	workers.Wait()
	<-faultsDone
	r.mu.Lock()
	r.cur = nil
	r.mu.Unlock()
	r.res.Phases = append(r.res.Phases, r.summarise(ph, time.Since(ph.start)))
	r.logf("phase %s: workers done after %s", ph.Name, time.Since(ph.start).Round(time.Millisecond))
	return r.restoreAll(ctx)
}

// inject runs ph's faults one after the other, FaultGap of load before each and after the
// last.
func (r *runner) inject(ctx context.Context, ph *phaseRun) {
	for _, kind := range ph.Faults {
		if !sleep(ctx, r.cfg.FaultGap) {
			return
		}
		f := &faultRecord{kind: kind}
		err := faultKinds[kind].inject(r, ctx, f)
		if err != nil {
			r.faultErr("%s of %s: %v", kind, f.target, err)
		}
		if !f.start.IsZero() {
			if f.end.IsZero() {
				f.end = time.Now()
			}
			ph.faults = append(ph.faults, f)
		}
	}
	sleep(ctx, r.cfg.FaultGap)
}

// summarise turns ph's calls and faults into its result, and its failures into the run's.
func (r *runner) summarise(ph *phaseRun, took time.Duration) PhaseResult {
	res := PhaseResult{Phase: ph.Phase, FailuresAllowed: ph.failuresAllowed(), Ops: r.ops.Load() - ph.opsAtStart,
		Calls: int64(len(ph.calls)), ErrorKinds: map[string]int{}, Duration: took}
	all := make([]time.Duration, 0, len(ph.calls))
	per := map[string][]time.Duration{}
	for _, c := range ph.calls {
		all = append(all, c.took)
		per[c.method] = append(per[c.method], c.took)
		if c.err == nil {
			continue
		}
		res.FailedCalls++
		res.ErrorKinds[c.method+": "+digits.ReplaceAllString(c.err.Error(), "#")]++
		if !res.FailuresAllowed {
			res.FailedEvidence = append(res.FailedEvidence, fmt.Sprintf("%s on %s mac %s sent %s (%s), answered after %s: %v",
				c.method, c.e.p.name, c.e.mac, stamp(c.sent), nearestFault(ph.faults, c.sent), c.took.Round(time.Millisecond), c.err))
		}
	}
	res.P50, res.P99, res.Max = quantile(all, 0.5), quantile(all, 0.99), quantile(all, 1)
	var parts []string
	for _, m := range []string{"RequestAddress", "ReleaseAddress"} {
		if ds := per[m]; len(ds) > 0 {
			slices.Sort(ds)
			slow := len(ds) - sort.Search(len(ds), func(i int) bool { return ds[i] >= time.Second })
			parts = append(parts, fmt.Sprintf("%s p50 %s p99 %s max %s (%d calls ≥1s)", m,
				quantile(ds, 0.5).Round(100*time.Microsecond), quantile(ds, 0.99).Round(time.Millisecond), quantile(ds, 1).Round(time.Millisecond), slow))
		}
	}
	res.Latency = strings.Join(parts, "; ")
	for _, f := range ph.faults {
		res.Faults = append(res.Faults, faultLine(f, ph.calls))
		if f.recovery > 0 {
			res.Recoveries = append(res.Recoveries, f.recovery)
		}
	}
	if n := len(ph.Phase.Faults) - len(ph.faults); n > 0 {
		r.fail("phase %s: %d of its %d faults did not happen", ph.Name, n, len(ph.Phase.Faults))
	}
	if !res.FailuresAllowed && res.FailedCalls > 0 {
		r.fail("phase %s: %d failed requests, budget 0 (etcd faults only): %s", ph.Name, res.FailedCalls, res.FailedEvidence[0])
	}
	if ph.MaxP99 > 0 && res.P99 > ph.MaxP99 {
		r.fail("phase %s: p99 %s, above its bound %s", ph.Name, res.P99.Round(time.Millisecond), ph.MaxP99)
	}
	return res
}

// quantile of ds, sorted in place.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(int(q*float64(len(ds))), len(ds)-1)]
}

// nearestFault says when t was relative to the fault whose start is nearest.
func nearestFault(faults []*faultRecord, t time.Time) string {
	var best *faultRecord
	for _, f := range faults {
		if best == nil || absDur(t.Sub(f.start)) < absDur(t.Sub(best.start)) {
			best = f
		}
	}
	if best == nil {
		return "no fault in this phase"
	}
	d := t.Sub(best.start)
	s := relative(d, fmt.Sprintf("the %s of %s at %s", best.kind, best.target, stamp(best.start)))
	if d >= 0 && t.Before(best.end) {
		s += ", while it lasted"
	}
	return s
}

func absDur(d time.Duration) time.Duration { return max(d, -d) }

// relative is "1.25s after what" or "0.50s before what".
func relative(d time.Duration, what string) string {
	if d < 0 {
		return fmt.Sprintf("%.2fs before %s", -d.Seconds(), what)
	}
	return fmt.Sprintf("%.2fs after %s", d.Seconds(), what)
}

// faultLine is a fault with the calls that were in flight while it lasted.
func faultLine(f *faultRecord, calls []call) string {
	n, failed := 0, 0
	var slowest *call
	for i, c := range calls {
		if c.sent.After(f.end) || c.sent.Add(c.took).Before(f.start) {
			continue
		}
		n++
		if c.err != nil {
			failed++
		}
		if slowest == nil || c.took > slowest.took {
			slowest = &calls[i]
		}
	}
	s := fmt.Sprintf("%s %s of %s for %s", stamp(f.start), f.kind, f.target, f.end.Sub(f.start).Round(time.Millisecond))
	for _, n := range f.notes {
		s += "; " + n
	}
	s += fmt.Sprintf("; %d calls in flight meanwhile, %d failed", n, failed)
	if slowest != nil {
		s += fmt.Sprintf(", slowest %s (%s sent %s)", slowest.took.Round(time.Millisecond), slowest.method, relative(slowest.sent.Sub(f.start), "the fault began"))
	}
	return s
}
