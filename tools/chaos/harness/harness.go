// Package harness is a chaos test of the talkingdata IPAM plugin on a lab (internal/lab): workers
// act as Docker endpoints on the lab's hosts and allocate and release addresses through the
// plugins' sockets, speaking the remote IPAM protocol as dockerd does, through phases of faults:
// etcd's (a leader killed, a member frozen, a member restarted), where not one request may
// fail, then the plugins' (killed and restarted), where dockerd sees failed requests but
// nothing may be lost or leaked. It records which endpoint holds which address at every moment,
// so an address handed to a second holder while the first still holds it is caught when it
// happens, and afterwards compares etcd (read directly, at one revision) with what the
// endpoints believe.
//
// The tool tools/chaos and the test e2e/chaos_test.go run it; see Run.
package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/internal/lab"
	"github.com/talkingdata/ipam/internal/pluginclient"
)

// Config is one run. Zero values take the defaults in Defaults.
type Config struct {
	// Phases run one after the other; operations are logical (a RequestAddress or a
	// ReleaseAddress, however often it had to be re-sent).
	Phases []Phase
	// Concurrency is the number of workers, each one endpoint at a time.
	Concurrency int
	// Subnet and IPRange are the Docker network's --subnet and --ip-range; the pool is created
	// (and seeded with IPRange) by the first RequestPool.
	Subnet, IPRange string
	// Sticky addresses are allocated before the faults start and held until the end.
	Sticky int
	// KeepPercent of the allocations made under load are kept to the end, at most MaxKeep.
	KeepPercent float64
	MaxKeep     int
	// MaxHold bounds how long a worker holds an address before releasing it (uniform from 0).
	MaxHold time.Duration

	// FaultGap is the load before each fault of a phase and after its last.
	FaultGap time.Duration
	// EtcdDown is how long a killed leader stays down, MemberDown a restarted follower,
	// Freeze a frozen member, PluginDown a killed plugin.
	EtcdDown, MemberDown, Freeze, PluginDown time.Duration
	// MaxDuration stops a phase even if its operations or faults were not done (a failure).
	MaxDuration time.Duration

	// CallTimeout bounds one HTTP call. dockerd has none for legacy plugins; the plugin's own
	// --request-timeout (10s) bounds its answer.
	CallTimeout time.Duration
	// GiveUp bounds one logical operation including its retries.
	GiveUp time.Duration
	// ReleaseErrorRetries is how often an error answer to a ReleaseAddress is retried (transport
	// errors are retried until GiveUp, as dockerd's plugin client does).
	ReleaseErrorRetries int
	// FailOnErrorAnswer makes an error answer to a RequestAddress fail the endpoint, as dockerd
	// does (the container does not start; a new attempt is a new endpoint with a new MAC),
	// instead of retrying it with the same MAC. A claim that committed before such an answer is
	// then only cleaned up by the plugin itself.
	FailOnErrorAnswer bool

	// EtcdPrefix is the daemon's --etcd-prefix.
	EtcdPrefix string
	// Seed makes the workers' choices (hosts, hold times) repeatable; 0 picks one.
	Seed uint64
	// Logf receives progress lines; nil is quiet.
	Logf func(format string, args ...any)
}

// Defaults is the long form's configuration. Its first phase is issue 15's target: 4,000
// requests at 32 concurrent through 3 leader kills with 0 failed and p99 ≤ 3s.
var Defaults = Config{
	Phases: []Phase{
		{Name: "leader-kills", Ops: 4000, Faults: []string{"leader-kill", "leader-kill", "leader-kill"}, MaxP99: 3 * time.Second},
		{Name: "members", Ops: 2000, Faults: []string{"leader-freeze", "follower-freeze", "follower-restart", "leader-freeze", "follower-freeze", "follower-restart"}},
		{Name: "plugin-kills", Ops: 10000, Faults: slices.Repeat([]string{"plugin-kill"}, 15)},
	},
	Concurrency:         32,
	Subnet:              "198.18.0.0/16",
	IPRange:             "198.18.4.0/22",
	Sticky:              64,
	KeepPercent:         2,
	MaxKeep:             200,
	MaxHold:             20 * time.Millisecond,
	FaultGap:            3 * time.Second,
	EtcdDown:            2 * time.Second,
	MemberDown:          5 * time.Second,
	Freeze:              3 * time.Second,
	PluginDown:          time.Second,
	MaxDuration:         5 * time.Minute,
	CallTimeout:         30 * time.Second,
	GiveUp:              60 * time.Second,
	ReleaseErrorRetries: 10,
	EtcdPrefix:          "/talkingdata/ipam/",
}

func (c *Config) fill() {
	d := Defaults
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if c.Phases == nil {
		c.Phases = d.Phases
	}
	setInt(&c.Concurrency, d.Concurrency)
	setInt(&c.ReleaseErrorRetries, d.ReleaseErrorRetries)
	setDur(&c.MaxHold, d.MaxHold)
	setDur(&c.FaultGap, d.FaultGap)
	setDur(&c.EtcdDown, d.EtcdDown)
	setDur(&c.MemberDown, d.MemberDown)
	setDur(&c.Freeze, d.Freeze)
	setDur(&c.PluginDown, d.PluginDown)
	setDur(&c.MaxDuration, d.MaxDuration)
	setDur(&c.CallTimeout, d.CallTimeout)
	setDur(&c.GiveUp, d.GiveUp)
	if c.Subnet == "" {
		c.Subnet = d.Subnet
	}
	if c.IPRange == "" {
		c.IPRange = d.IPRange
	}
	if c.EtcdPrefix == "" {
		c.EtcdPrefix = d.EtcdPrefix
	}
	if !strings.HasSuffix(c.EtcdPrefix, "/") {
		c.EtcdPrefix += "/"
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Result is what a run saw. A run passed when Failures is empty.
type Result struct {
	Ops      int64 // logical operations completed (allocations + releases, each counted once)
	Allocs   int64 // addresses handed out
	Releases int64 // releases answered with success
	Calls    int64 // HTTP calls sent, retries included

	Errors          int64 // error answers ({"Err": …}) from a plugin
	TransportErrors int64 // calls without an answer: plugin down, connection cut, timeout
	Retries         int64 // calls re-sent for the same logical operation (same MAC)
	FailedAllocs    int64 // endpoints that got no address: given up after GiveUp, or failed (FailOnErrorAnswer)
	LeakedReleases  int64 // releases given up: dockerd would forget them

	// StaleReleaseRetries counts release retries sent while the harness knew that the address
	// had meanwhile been handed to another endpoint of the same host (the first attempt had
	// committed): the plugin cannot tell such a retry from a release by the new holder, since
	// ReleaseAddress carries no MAC. dockerd does the same (it re-sends after transport errors).
	StaleReleaseRetries int64
	// StaleReleaseFreed counts those that did free the new holder's address (a failure).
	StaleReleaseFreed int

	Duplicates          int // an address handed to an endpoint while another one held it
	Lost                int // an address an endpoint holds that etcd does not record for it (at the end)
	LostAtGrant         int // the same, read from etcd right after the grant
	ReleasesNotDone     int // a release answered with success whose record etcd still has
	GrantsVerified      int64
	Unverified          int64 // grant/release reads that etcd did not answer (elections)
	Leaked              int   // container addresses in used/ that no endpoint holds
	LostWithPlugin      int   // releases answered with success whose plugin was killed before it committed them (killWindow): gc's to find
	InvariantViolations int   // free/used/seeded inconsistencies, ipamctl check anomalies
	FreeMismatch        int   // seeded addresses not free once the endpoints released everything

	CheckRan bool   // ipamctl check exists and ran
	Check    string // its verdict

	Phases      []PhaseResult
	FaultErrors int           // fault commands (kill, freeze, restart, finding the leader) that failed
	Duration    time.Duration // of the phases
	Seed        uint64

	Failures  []string // one line each: what makes the run fail
	Anomalies []string // evidence, several lines each
	Timeline  []string // faults and phases, with times
}

// Line is the one-line summary.
func (r *Result) Line() string {
	return fmt.Sprintf("chaos: operations=%d (allocations=%d releases=%d, calls=%d) errors-returned=%d transport-errors=%d retries=%d "+
		"duplicates=%d lost=%d lost-at-grant=%d releases-not-done=%d leaked=%d lost-with-plugin=%d leaked-releases=%d failed-allocations=%d stale-release-retries=%d (freeing a holder's: %d) invariant-violations=%d free-mismatch=%d "+
		"grants-verified=%d unverified-reads=%d duration=%s seed=%d",
		r.Ops, r.Allocs, r.Releases, r.Calls, r.Errors, r.TransportErrors, r.Retries,
		r.Duplicates, r.Lost, r.LostAtGrant, r.ReleasesNotDone, r.Leaked, r.LostWithPlugin, r.LeakedReleases, r.FailedAllocs, r.StaleReleaseRetries, r.StaleReleaseFreed, r.InvariantViolations, r.FreeMismatch,
		r.GrantsVerified, r.Unverified, r.Duration.Round(100*time.Millisecond), r.Seed)
}

// Report is the summary line, the failures, and the anomalies with their evidence.
func (r *Result) Report(timeline bool) string {
	var b strings.Builder
	b.WriteString(r.Line() + "\n")
	fmt.Fprintf(&b, "ipamctl check: %s\n", r.Check)
	for _, p := range r.Phases {
		b.WriteString(p.Line() + "\n")
		fmt.Fprintf(&b, "  latency: %s\n", p.Latency)
		for _, f := range p.Faults {
			b.WriteString("  fault: " + f + "\n")
		}
		kinds := make([]string, 0, len(p.ErrorKinds))
		for k := range p.ErrorKinds {
			kinds = append(kinds, k)
		}
		slices.SortFunc(kinds, func(a, b string) int { return p.ErrorKinds[b] - p.ErrorKinds[a] })
		for _, k := range kinds {
			fmt.Fprintf(&b, "  failed calls: %5d × %s\n", p.ErrorKinds[k], k)
		}
		for _, e := range p.FailedEvidence {
			b.WriteString("  FAILED REQUEST: " + e + "\n")
		}
	}
	for _, f := range r.Failures {
		b.WriteString("FAIL: " + f + "\n")
	}
	for _, a := range r.Anomalies {
		b.WriteString("--- " + a + "\n")
	}
	if timeline {
		b.WriteString("timeline:\n")
		for _, t := range r.Timeline {
			b.WriteString("  " + t + "\n")
		}
	}
	return b.String()
}

// endpoint is one logical Docker endpoint: one MAC, one host, one address at most. Its events
// are the evidence printed for anomalies.
type endpoint struct {
	mac    string
	p      *plugin
	worker int
	phase  string

	mu        sync.Mutex
	addr      netip.Addr
	uncertain bool   // an attempt ended without a clear answer: it may have committed
	state     string // allocating, held, kept, releasing, released, release-failed, gave-up
	// releasedAt is when the release that was answered with success was
	// sent (its answer may be read after a kill that followed it): the
	// plugin commits it a moment after answering (pool.ReleaseBehind).
	releasedAt time.Time
	events     []string
}

func (e *endpoint) logf(format string, args ...any) {
	e.mu.Lock()
	e.events = append(e.events, stamp(time.Now())+" "+fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *endpoint) describe() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprintf("endpoint mac %s on %s (worker %d, phase %s, state %s):\n      %s", e.mac, e.p.name, e.worker, e.phase, e.state,
		strings.Join(e.events, "\n      "))
}

func (e *endpoint) set(f func(e *endpoint)) {
	e.mu.Lock()
	f(e)
	e.mu.Unlock()
}

func stamp(t time.Time) string { return t.UTC().Format("15:04:05.000") }

type runner struct {
	cfg     Config
	lab     *lab.Lab
	plugins []*plugin
	poolID  string
	subnet  netip.Prefix
	seeded  map[netip.Addr]bool
	etcd    *clientv3.Client
	macBase uint32
	// faultRng is the fault goroutine's, for its choices (hosts, followers).
	faultRng *rand.Rand

	macSeq   atomic.Uint32
	stopLoad atomic.Bool
	res      Result
	// counters updated by workers; copied into res at the end
	ops, allocs, releases, calls, errs, terrs, retries, failed, leakedRel, stale atomic.Int64
	verified, unverified, lostAtGrant, notReleased, staleFreed                   atomic.Int64
	releaseChecks                                                                sync.WaitGroup // awaitReleased calls under way
	pluginKills                                                                  map[string][]time.Time

	mu        sync.Mutex
	held      map[netip.Addr][]*endpoint // who holds each address right now, per the endpoints (two: a duplicate)
	addrHist  map[netip.Addr][]string    // grants and releases per address, the last few
	byMAC     map[string]*endpoint       // every endpoint ever
	kept      []*endpoint                // held to the end
	dups      []string                   // evidence of duplicates
	timeline  []string                   // faults and phases
	faultErrs []string                   // a fault command that failed
	stales    map[netip.Addr]*endpoint   // last stale release retry per address
	cur       *phaseRun                  // the phase under way, if any
}

// digits elides numbers and MACs from error texts, to count them by kind.
var digits = regexp.MustCompile(`[0-9a-f]{2}(:[0-9a-f]{2}){5}|[0-9]+`)

func (r *runner) logf(format string, args ...any) {
	line := stamp(time.Now()) + " " + fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.timeline = append(r.timeline, line)
	r.mu.Unlock()
	r.cfg.Logf("%s", line)
}

func (r *runner) newEndpoint(p *plugin, worker int) *endpoint {
	n := r.macSeq.Add(1)
	// Locally administered unicast, a per-run prefix, then a sequence number: one MAC per
	// endpoint, never reused within a run.
	mac := fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(r.macBase>>8), byte(r.macBase), byte(n>>16), byte(n>>8), byte(n))
	e := &endpoint{mac: mac, p: p, worker: worker, state: "allocating"}
	r.mu.Lock()
	if r.cur != nil {
		e.phase = r.cur.Name
	}
	r.byMAC[mac] = e
	r.mu.Unlock()
	return e
}

func (r *runner) histLocked(a netip.Addr, format string, args ...any) {
	h := append(r.addrHist[a], stamp(time.Now())+" "+fmt.Sprintf(format, args...))
	if len(h) > 12 {
		h = h[len(h)-12:]
	}
	r.addrHist[a] = h
}

// hold records that e was handed a. If another endpoint holds a at this moment, that is a
// duplicate.
func (r *runner) hold(a netip.Addr, e *endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cur := range r.held[a] {
		if cur == e {
			continue
		}
		ev := fmt.Sprintf("DUPLICATE %s handed to %s mac %s at %s while held by %s mac %s\n    address history:\n      %s\n    holder: %s\n    new:    %s",
			a, e.p.name, e.mac, stamp(time.Now()), cur.p.name, cur.mac,
			strings.Join(r.addrHist[a], "\n      "), cur.describe(), e.describe())
		if s := r.stales[a]; s != nil {
			ev += "\n    a stale release retry of this address was sent by: " + s.describe()
		}
		r.dups = append(r.dups, ev)
		r.cfg.Logf("%s", ev)
	}
	if !slices.Contains(r.held[a], e) {
		r.held[a] = append(r.held[a], e)
	}
	r.histLocked(a, "granted to %s mac %s", e.p.name, e.mac)
}

// unhold forgets that e holds a, before its release is sent: from then on another endpoint
// may legitimately be handed a.
func (r *runner) unhold(a netip.Addr, e *endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := slices.Index(r.held[a], e); i >= 0 {
		r.held[a] = slices.Delete(slices.Clone(r.held[a]), i, i+1)
	}
	if len(r.held[a]) == 0 {
		delete(r.held, a)
	}
	r.histLocked(a, "released by %s mac %s (release sent next)", e.p.name, e.mac)
}

// Run runs the chaos test on l and verifies the result. The returned error is for failures of
// the harness or the lab (the result is then incomplete); problems of the plugin are in
// Result.Failures.
func Run(ctx context.Context, l *lab.Lab, cfg Config) (*Result, error) {
	cfg.fill()
	r := &runner{
		cfg:      cfg,
		lab:      l,
		held:     map[netip.Addr][]*endpoint{},
		addrHist: map[netip.Addr][]string{},
		byMAC:    map[string]*endpoint{},
		stales:   map[netip.Addr]*endpoint{},
		macBase:  uint32(cfg.Seed>>16) & 0xffff,
		faultRng: rand.New(rand.NewPCG(cfg.Seed, 0)),
	}
	r.res.Seed = cfg.Seed
	var err error
	if r.subnet, err = netip.ParsePrefix(cfg.Subnet); err != nil {
		return nil, fmt.Errorf("subnet: %w", err)
	}
	ipRange, err := netip.ParsePrefix(cfg.IPRange)
	if err != nil || !r.subnet.Contains(ipRange.Addr()) || ipRange.Bits() < r.subnet.Bits() {
		return nil, fmt.Errorf("ip range %q: not a prefix within %s", cfg.IPRange, r.subnet)
	}
	r.seeded = map[netip.Addr]bool{}
	for a := ipRange.Masked().Addr(); ipRange.Contains(a); a = a.Next() {
		if a == r.subnet.Masked().Addr() || isBroadcast(r.subnet, a) {
			continue
		}
		r.seeded[a] = true
	}
	for h := 1; h <= l.Hosts(); h++ {
		r.plugins = append(r.plugins, newPlugin(h, l.PluginSocket(h), cfg.CallTimeout))
	}
	if r.etcd, err = dialEtcd(l); err != nil {
		return nil, err
	}
	defer r.etcd.Close()

	if err := r.setup(ctx); err != nil {
		return &r.res, err
	}
	for _, p := range cfg.Phases {
		start := time.Now()
		err = r.runPhase(ctx, &phaseRun{Phase: p})
		r.res.Duration += time.Since(start)
		if err != nil {
			break
		}
	}
	r.releaseChecks.Wait()
	r.counters()
	if err != nil {
		r.finish()
		return &r.res, err
	}
	err = r.verify(ctx)
	r.finish()
	return &r.res, err
}

func isBroadcast(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || p.Bits() >= 31 {
		return false
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host := uint32(1)<<(32-p.Bits()) - 1
	return v&host == host
}

// setup attaches the pool on every host (dockerd's `network create` on each), checks that it
// was seeded with exactly the ip-range, and allocates the sticky addresses.
func (r *runner) setup(ctx context.Context) error {
	r.logf("setup: RequestPool %s %s on %d hosts", r.cfg.Subnet, r.cfg.IPRange, len(r.plugins))
	for _, p := range r.plugins {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		res, err := p.RequestPool(cctx, pluginclient.RequestPoolRequest{Pool: r.cfg.Subnet, SubPool: r.cfg.IPRange, Options: map[string]string{}})
		cancel()
		if err != nil {
			return fmt.Errorf("RequestPool on %s: %w", p.name, err)
		}
		if r.poolID != "" && res.PoolID != r.poolID {
			return fmt.Errorf("RequestPool on %s: PoolID %q, %s said %q", p.name, res.PoolID, r.plugins[0].name, r.poolID)
		}
		r.poolID = res.PoolID
	}
	snap, err := r.snapshot(ctx)
	if err != nil {
		return err
	}
	if v := r.invariants(snap, "before the load"); len(v) > 0 {
		return fmt.Errorf("the pool is not in its seeded state before the load:\n%s", strings.Join(v, "\n"))
	}
	if len(snap.used) > 0 || len(snap.free) != len(r.seeded) {
		return fmt.Errorf("the pool is in use before the load (%d used, %d free, %d seeded): run on a fresh lab", len(snap.used), len(snap.free), len(r.seeded))
	}
	r.logf("setup: pool %s seeded with %d addresses (meta ranges %s)", r.poolID, len(snap.free), snap.metaRanges)
	for i := 0; i < r.cfg.Sticky; i++ {
		e := r.newEndpoint(r.plugins[i%len(r.plugins)], -1)
		a, ok := r.allocate(ctx, e)
		if !ok {
			return fmt.Errorf("allocating sticky address %d: %s", i, e.describe())
		}
		r.ops.Add(1)
		r.hold(a, e)
		r.checkGrant(ctx, a, e)
		e.set(func(e *endpoint) { e.state = "kept" })
		r.mu.Lock()
		r.kept = append(r.kept, e)
		r.mu.Unlock()
	}
	r.logf("setup: %d sticky addresses held", r.cfg.Sticky)
	return nil
}

func (r *runner) worker(ctx context.Context, id int) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(id)+1))
	for !r.stopLoad.Load() && ctx.Err() == nil {
		e := r.newEndpoint(r.plugins[rng.IntN(len(r.plugins))], id)
		a, ok := r.allocate(ctx, e)
		r.ops.Add(1)
		if !ok {
			continue
		}
		r.hold(a, e)
		holdUntil := time.Now()
		if r.cfg.MaxHold > 0 {
			holdUntil = holdUntil.Add(time.Duration(rng.Int64N(int64(r.cfg.MaxHold))))
		}
		r.checkGrant(ctx, a, e)
		time.Sleep(time.Until(holdUntil))
		if rng.Float64()*100 < r.cfg.KeepPercent {
			r.mu.Lock()
			keep := len(r.kept) < r.cfg.Sticky+r.cfg.MaxKeep
			if keep {
				r.kept = append(r.kept, e)
			}
			r.mu.Unlock()
			if keep {
				e.set(func(e *endpoint) { e.state = "kept" })
				continue
			}
		}
		r.unhold(a, e)
		if r.release(ctx, e, a) {
			r.checkReleased(ctx, a, e)
		}
		r.ops.Add(1)
	}
}

// readUsed reads used/<a> from etcd (a linearizable read: it sees every commit acknowledged
// before it). ok is false when etcd did not answer (an election).
func (r *runner) readUsed(ctx context.Context, a netip.Addr) (u *usedEntry, ok bool) {
	key := r.cfg.EtcdPrefix + "used/" + subnetKey(r.subnet) + "/" + addrKey(a)
	for range 2 {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := r.etcd.Get(cctx, key)
		cancel()
		if err != nil {
			continue
		}
		if len(resp.Kvs) == 0 {
			return nil, true
		}
		var v usedEntry
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			v = usedEntry{Kind: fmt.Sprintf("malformed %q", resp.Kvs[0].Value)}
		}
		v.key = key
		return &v, true
	}
	r.unverified.Add(1)
	return nil, false
}

// checkGrant: an address just handed to e must be recorded for e in etcd (the plugin answered
// after its commit). A grant that was not committed leaves no trace once released, so this is
// checked at once, while e holds it.
func (r *runner) checkGrant(ctx context.Context, a netip.Addr, e *endpoint) {
	u, ok := r.readUsed(ctx, a)
	if !ok {
		return
	}
	if u != nil && u.Kind == "container" && u.Host == e.p.name && strings.EqualFold(u.MAC, e.mac) {
		r.verified.Add(1)
		return
	}
	r.lostAtGrant.Add(1)
	rec := "absent"
	if u != nil {
		rec = u.String()
	}
	e.logf("etcd read after the grant: used/%s is %s", addrKey(a), rec)
	r.anomaly("LOST AT GRANT %s: handed to %s mac %s, but etcd records %s\n    %s", a, e.p.name, e.mac, rec, e.describe())
}

// checkStale: e re-sent its release of a after a had been handed to another endpoint of the
// same host (its earlier attempt had committed). ReleaseAddress names no MAC, so the plugin may
// free the new holder's address: then a third endpoint can be handed it while the new holder
// still uses it. Each new holder that still holds a must still be recorded.
func (r *runner) checkStale(ctx context.Context, a netip.Addr, e *endpoint, holders []*endpoint) {
	r.mu.Lock()
	hist := strings.Join(r.addrHist[a], "\n      ")
	r.mu.Unlock()
	u, ok := r.readUsed(ctx, a)
	for _, h := range holders {
		r.mu.Lock()
		still := slices.Contains(r.held[a], h)
		r.mu.Unlock()
		switch {
		case !still || !ok:
			why := "the holder has let go since: not checked"
			if !ok {
				why = "etcd did not answer: not checked"
			}
			r.anomaly("STALE RELEASE RETRY %s by %s mac %s while %s mac %s held it (%s)\n    address history:\n      %s\n    %s\n    %s",
				a, e.p.name, e.mac, h.p.name, h.mac, why, hist, e.describe(), h.describe())
		case u != nil && u.Host == h.p.name && strings.EqualFold(u.MAC, h.mac):
			r.anomaly("STALE RELEASE RETRY %s by %s mac %s while %s mac %s held it: harmless, the holder is still recorded\n    address history:\n      %s\n    %s",
				a, e.p.name, e.mac, h.p.name, h.mac, hist, e.describe())
		default:
			r.staleFreed.Add(1)
			rec := "absent"
			if u != nil {
				rec = u.String()
			}
			r.anomaly("STALE RELEASE FREED %s: a retried release by %s mac %s freed the address of its new holder %s mac %s, which still holds it (etcd: %s)\n    address history:\n      %s\n    %s\n    %s",
				a, e.p.name, e.mac, h.p.name, h.mac, rec, hist, e.describe(), h.describe())
		}
	}
}

// releaseSettle bounds how long a release answered with success may take
// to reach etcd: the plugin commits it within a few milliseconds, or, in an
// election, retries it for up to its --request-timeout (10 s).
const releaseSettle = 15 * time.Second

// killWindow is how soon after a release is sent a SIGKILL of its plugin
// may take the release with it: the plugin answers before it commits.
const killWindow = 250 * time.Millisecond

// checkReleased: after a release answered with success, etcd must stop
// recording e there within releaseSettle, unless its plugin was killed
// first (killedAfterRelease). It checks in the background: the worker goes
// on, and the verification waits for every check (r.releaseChecks).
func (r *runner) checkReleased(ctx context.Context, a netip.Addr, e *endpoint) {
	r.releaseChecks.Go(func() {
		deadline := time.Now().Add(releaseSettle)
		for wait := 5 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
			time.Sleep(wait)
			u, ok := r.readUsed(ctx, a)
			if ok && (u == nil || !strings.EqualFold(u.MAC, e.mac) || u.Host != e.p.name) {
				return
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				if killed, after := r.killedAfterRelease(e); killed {
					e.logf("etcd still records the released %s: its plugin was killed %s after the release was sent", a, after.Round(time.Millisecond))
					return
				}
				r.notReleased.Add(1)
				e.logf("etcd read %s after the release: used/%s is still %v", releaseSettle, addrKey(a), u)
				r.anomaly("RELEASE NOT DONE %s: ReleaseAddress on %s answered success, but etcd still records %v after %s\n    %s", a, e.p.name, u, releaseSettle, e.describe())
				return
			}
		}
	})
}

// killedAfterRelease says whether e's plugin was killed (the kill done)
// within killWindow after e's successful release was sent, and how long
// after.
func (r *runner) killedAfterRelease(e *endpoint) (bool, time.Duration) {
	e.mu.Lock()
	at := e.releasedAt
	e.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.pluginKills[e.p.name] {
		if after := k.Sub(at); !at.IsZero() && after >= 0 && after <= killWindow {
			return true, after
		}
	}
	return false, 0
}

func backoff(attempt int) time.Duration {
	d := 50 * time.Millisecond << min(attempt-1, 5)
	return min(d, time.Second) + rand.N(50*time.Millisecond)
}

// allocate is dockerd's RequestAddress for a new endpoint: with its MAC, no address. A call
// without an answer is re-sent with the same MAC (dockerd's plugin client does that by
// itself); an error answer is retried too, with the same MAC, as a restarted container would.
// Whatever a retry answers is accepted.
func (r *runner) allocate(ctx context.Context, e *endpoint) (netip.Addr, bool) {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			r.retries.Add(1)
			time.Sleep(backoff(attempt - 1))
		}
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		res, err := e.p.RequestAddress(cctx, pluginclient.RequestAddressRequest{PoolID: r.poolID, Options: map[string]string{pluginclient.OptMAC: e.mac}})
		cancel()
		r.calls.Add(1)
		r.record("RequestAddress", e, t0, err)
		took := time.Since(t0).Round(time.Millisecond)
		if err == nil {
			a, perr := netip.ParsePrefix(res.Address)
			if perr != nil || a.Bits() != r.subnet.Bits() || !r.seeded[a.Addr()] {
				// Not a usable answer: dockerd would fail the endpoint. Count it as an
				// error answer and retry, and make it an anomaly.
				err = &pluginclient.CallError{Msg: fmt.Sprintf("answer %q is not an address of %s in %s", res.Address, r.subnet, r.cfg.IPRange)}
				r.anomaly("bad RequestAddress answer on %s for mac %s: %q", e.p.name, e.mac, res.Address)
				r.fail("RequestAddress answered %q", res.Address)
			} else {
				e.logf("RequestAddress #%d sent %s → %s (%s)", attempt, stamp(t0), a.Addr(), took)
				r.allocs.Add(1)
				e.set(func(e *endpoint) { e.addr, e.state = a.Addr(), "held" })
				return a.Addr(), true
			}
		}
		if pluginclient.IsTransport(err) {
			r.terrs.Add(1)
		} else {
			r.errs.Add(1)
		}
		e.logf("RequestAddress #%d sent %s → %v (%s)", attempt, stamp(t0), err, took)
		e.set(func(e *endpoint) { e.uncertain = true })
		if r.cfg.FailOnErrorAnswer && !pluginclient.IsTransport(err) {
			r.failed.Add(1)
			e.set(func(e *endpoint) { e.state = "failed" })
			e.logf("RequestAddress failed: the endpoint is given up, as dockerd would")
			return netip.Addr{}, false
		}
		if time.Since(start) > r.cfg.GiveUp || ctx.Err() != nil {
			r.failed.Add(1)
			e.set(func(e *endpoint) { e.state = "gave-up" })
			e.logf("RequestAddress given up after %d attempts", attempt)
			return netip.Addr{}, false
		}
	}
}

// release is dockerd's ReleaseAddress (no MAC: the plugin must know the holder). Transport
// errors are retried until GiveUp, error answers ReleaseErrorRetries times; then the release
// is counted as leaked, as dockerd forgets failed releases.
func (r *runner) release(ctx context.Context, e *endpoint, a netip.Addr) bool {
	e.set(func(e *endpoint) { e.state = "releasing" })
	start := time.Now()
	errAnswers := 0
	for attempt := 1; ; attempt++ {
		var newHolders []*endpoint // of the same host, when this is a stale retry
		if attempt > 1 {
			r.retries.Add(1)
			time.Sleep(backoff(attempt - 1))
			r.mu.Lock()
			for _, cur := range r.held[a] {
				if cur != e && cur.p == e.p {
					r.stale.Add(1)
					r.stales[a] = e
					newHolders = append(newHolders, cur)
					r.histLocked(a, "stale release retry #%d by %s mac %s while held by %s mac %s", attempt, e.p.name, e.mac, cur.p.name, cur.mac)
					e.logf("release retry #%d of %s sent while %s (same host) holds it", attempt, a, cur.mac)
				}
			}
			r.mu.Unlock()
		}
		if len(newHolders) > 0 {
			defer r.checkStale(ctx, a, e, newHolders)
		}
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		err := e.p.ReleaseAddress(cctx, r.poolID, a.String())
		cancel()
		r.calls.Add(1)
		r.record("ReleaseAddress", e, t0, err)
		took := time.Since(t0).Round(time.Millisecond)
		if err == nil {
			e.logf("ReleaseAddress %s #%d sent %s → ok (%s)", a, attempt, stamp(t0), took)
			r.releases.Add(1)
			e.set(func(e *endpoint) { e.state, e.releasedAt = "released", t0 })
			return true
		}
		e.logf("ReleaseAddress %s #%d sent %s → %v (%s)", a, attempt, stamp(t0), err, took)
		if pluginclient.IsTransport(err) {
			r.terrs.Add(1)
		} else {
			r.errs.Add(1)
			errAnswers++
		}
		if errAnswers > r.cfg.ReleaseErrorRetries || time.Since(start) > r.cfg.GiveUp || ctx.Err() != nil {
			r.leakedRel.Add(1)
			e.set(func(e *endpoint) { e.state = "release-failed" })
			e.logf("ReleaseAddress %s given up after %d attempts", a, attempt)
			return false
		}
	}
}

// counters copies the counters into the result, at the end of the load: the verification's
// own calls are not counted.
func (r *runner) counters() {
	r.res.Ops, r.res.Allocs, r.res.Releases, r.res.Calls = r.ops.Load(), r.allocs.Load(), r.releases.Load(), r.calls.Load()
	r.res.Errors, r.res.TransportErrors, r.res.Retries = r.errs.Load(), r.terrs.Load(), r.retries.Load()
	r.res.FailedAllocs, r.res.LeakedReleases, r.res.StaleReleaseRetries = r.failed.Load(), r.leakedRel.Load(), r.stale.Load()
	r.res.GrantsVerified, r.res.Unverified = r.verified.Load(), r.unverified.Load()
	r.res.LostAtGrant, r.res.ReleasesNotDone = int(r.lostAtGrant.Load()), int(r.notReleased.Load())
	if r.res.LostAtGrant > 0 {
		r.res.Failures = append(r.res.Failures, fmt.Sprintf("%d addresses handed out were not recorded for their holder in etcd right after", r.res.LostAtGrant))
	}
	if n := r.staleFreed.Load(); n > 0 {
		r.res.StaleReleaseFreed = int(n)
		r.res.Failures = append(r.res.Failures, fmt.Sprintf("%d retried releases freed the address of a new holder (ReleaseAddress carries no MAC)", n))
	}
	if r.res.ReleasesNotDone > 0 {
		r.res.Failures = append(r.res.Failures, fmt.Sprintf("%d releases answered with success left the holder's record in etcd", r.res.ReleasesNotDone))
	}
}

// finish adds the duplicates, fault errors and timeline to the result.
func (r *runner) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Duplicates = len(r.dups)
	if len(r.dups) > 0 {
		r.res.Failures = append(r.res.Failures, fmt.Sprintf("%d duplicate allocations", len(r.dups)))
		r.res.Anomalies = append(r.dups, r.res.Anomalies...)
	}
	if len(r.faultErrs) > 0 {
		r.res.FaultErrors = len(r.faultErrs)
		r.res.Failures = append(r.res.Failures, fmt.Sprintf("%d fault commands failed: the faults did not happen as planned", len(r.faultErrs)))
		r.res.Anomalies = append(r.res.Anomalies, "fault commands that failed:\n    "+strings.Join(r.faultErrs, "\n    "))
	}
	r.res.Timeline = r.timeline
}
