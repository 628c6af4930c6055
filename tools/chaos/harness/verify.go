package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The key layout, written here independently of etcdstore so that the check does not share
// the code it checks: <prefix>{meta,free,used}/<subnet as 198.18.0.0-16>[/<address>], IPv4
// addresses zero-padded (198.018.004.001).

func subnetKey(p netip.Prefix) string {
	return p.Masked().Addr().String() + "-" + strconv.Itoa(p.Bits())
}

func addrKey(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%03d.%03d.%03d.%03d", b[0], b[1], b[2], b[3])
}

func parseAddrKey(key string) (netip.Addr, error) {
	s := key[strings.LastIndexByte(key, '/')+1:]
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, fmt.Errorf("malformed address key %q", key)
	}
	var b [4]byte
	for i, p := range parts {
		if len(p) != 3 {
			return netip.Addr{}, fmt.Errorf("address key %q is not zero-padded", key)
		}
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("malformed address key %q", key)
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), nil
}

type usedEntry struct {
	Kind     string         `json:"kind"`
	Host     string         `json:"host"`
	MAC      string         `json:"mac"`
	Endpoint string         `json:"endpoint"`
	Holders  map[string]int `json:"holders"`
	Since    time.Time      `json:"since"`
	key      string
}

func (u usedEntry) String() string {
	return fmt.Sprintf("%s = {kind %s, host %s, mac %s, since %s}", u.key, u.Kind, u.Host, u.MAC, stamp(u.Since))
}

// snapshot is the pool at one revision.
type snapshot struct {
	rev        int64
	metaFound  bool
	metaRanges string
	seeded     map[netip.Addr]bool // from meta's ranges
	free       map[netip.Addr]bool
	freeBad    []string // keys that do not parse
	used       map[netip.Addr]usedEntry
	usedBad    []string
	owners     map[string]string // owners/<subnet>/<host>/<mac> → address, "host/mac" → value
}

func (r *runner) snapshot(ctx context.Context) (*snapshot, error) {
	sk := subnetKey(r.subnet)
	meta := r.cfg.EtcdPrefix + "meta/" + sk
	free := r.cfg.EtcdPrefix + "free/" + sk + "/"
	used := r.cfg.EtcdPrefix + "used/" + sk + "/"
	owners := r.cfg.EtcdPrefix + "owners/" + sk + "/"
	var resp *clientv3.TxnResponse
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err = r.etcd.Txn(cctx).Then(
			clientv3.OpGet(meta),
			clientv3.OpGet(free, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			clientv3.OpGet(used, clientv3.WithPrefix()),
			clientv3.OpGet(owners, clientv3.WithPrefix()),
		).Commit()
		cancel()
		if err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the pool from etcd: %w", err)
	}
	s := &snapshot{rev: resp.Header.Revision, free: map[netip.Addr]bool{}, used: map[netip.Addr]usedEntry{}, owners: map[string]string{}}
	for _, kv := range resp.Responses[3].GetResponseRange().Kvs {
		s.owners[strings.TrimPrefix(string(kv.Key), owners)] = string(kv.Value)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		s.metaFound = true
		var m struct {
			Ranges  string `json:"ranges"`
			Seeding bool   `json:"seeding"`
		}
		if err := json.Unmarshal(kvs[0].Value, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", meta, err)
		}
		s.metaRanges = m.Ranges
		if s.seeded, err = expandRanges(m.Ranges); err != nil {
			return nil, fmt.Errorf("%s: ranges %q: %w", meta, m.Ranges, err)
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		a, err := parseAddrKey(string(kv.Key))
		if err != nil {
			s.freeBad = append(s.freeBad, string(kv.Key))
			continue
		}
		s.free[a] = true
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		a, err := parseAddrKey(string(kv.Key))
		var u usedEntry
		if err == nil {
			err = json.Unmarshal(kv.Value, &u)
		}
		if err != nil {
			s.usedBad = append(s.usedBad, fmt.Sprintf("%s = %q: %v", kv.Key, kv.Value, err))
			continue
		}
		u.key = string(kv.Key)
		s.used[a] = u
	}
	return s, nil
}

// expandRanges parses meta's "A-B,C,…" into the set of addresses.
func expandRanges(s string) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		from, to, ok := strings.Cut(part, "-")
		if !ok {
			to = from
		}
		a, err := netip.ParseAddr(strings.TrimSpace(from))
		if err != nil {
			return nil, err
		}
		b, err := netip.ParseAddr(strings.TrimSpace(to))
		if err != nil {
			return nil, err
		}
		if b.Less(a) || !a.Is4() || !b.Is4() {
			return nil, fmt.Errorf("range %q", part)
		}
		for n := 0; ; a, n = a.Next(), n+1 {
			if n >= 1<<20 {
				return nil, fmt.Errorf("range %q: too large", part)
			}
			out[a] = true
			if a == b {
				break
			}
		}
	}
	return out, nil
}

// invariants: meta's ranges are the ip-range; no address both free and used; every seeded
// address free or used; every free and every used address seeded; no malformed keys.
func (r *runner) invariants(s *snapshot, when string) []string {
	var v []string
	add := func(format string, args ...any) {
		v = append(v, fmt.Sprintf("%s (revision %d): ", when, s.rev)+fmt.Sprintf(format, args...))
	}
	if !s.metaFound {
		add("no meta key for %s", r.subnet)
		return v
	}
	if !sameSet(s.seeded, r.seeded) {
		add("meta ranges %q are not the ip-range %s (%d addresses, want %d)", s.metaRanges, r.cfg.IPRange, len(s.seeded), len(r.seeded))
	}
	for _, k := range s.freeBad {
		add("malformed free key %s", k)
	}
	for _, k := range s.usedBad {
		add("malformed used entry %s", k)
	}
	for _, a := range sortedAddrs(s.free) {
		if _, ok := s.used[a]; ok {
			add("%s is both free and used (%s)", a, s.used[a])
		}
		if !r.seeded[a] {
			add("free address %s is not seeded", a)
		}
	}
	for _, a := range sortedKeys(s.used) {
		if !r.seeded[a] {
			add("used address %s is outside the seeded range: %s", a, s.used[a])
		}
		if u := s.used[a]; u.Kind != "container" {
			add("%s: kind %q, the harness only makes container allocations", a, u.Kind)
		}
	}
	for _, a := range sortedAddrs(r.seeded) {
		if _, ok := s.used[a]; !ok && !s.free[a] {
			add("seeded address %s is neither free nor used", a)
		}
	}
	// The owner index (owners/<subnet>/<host>/<mac> = address), when the daemon keeps one:
	// exactly one key per container record, naming its address.
	if len(s.owners) > 0 {
		for _, a := range sortedKeys(s.used) {
			u := s.used[a]
			if u.Kind != "container" || u.MAC == "" {
				continue
			}
			if got, ok := s.owners[u.Host+"/"+u.MAC]; !ok {
				add("%s has no owner index key %s/%s", u, u.Host, u.MAC)
			} else if got != a.String() {
				add("owner index %s/%s names %s, but %s records it at %s", u.Host, u.MAC, got, u.key, a)
			}
		}
		for k, val := range s.owners {
			host, mac, _ := strings.Cut(k, "/")
			a, err := netip.ParseAddr(val)
			if err != nil {
				add("owner index %s: malformed address %q", k, val)
				continue
			}
			if u, ok := s.used[a]; !ok || u.Host != host || u.MAC != mac {
				add("owner index %s names %s, which is not recorded for that endpoint (used: %v)", k, a, ok)
			}
		}
	}
	return v
}

func sameSet(a, b map[netip.Addr]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

func sortedKeys[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

func (r *runner) fail(format string, args ...any) {
	r.mu.Lock()
	r.res.Failures = append(r.res.Failures, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *runner) anomaly(format string, args ...any) {
	r.mu.Lock()
	r.res.Anomalies = append(r.res.Anomalies, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// releasedThenKilled is the one leak the design allows: the plugin answers
// a release before its commit, and a SIGKILL in between loses it (dockerd
// would not repeat it either); ipamctl gc finds it against dockerd.
const releasedThenKilled = "released with success, then lost with its plugin, killed"

// classify says where an entry no endpoint holds came from, by its MAC.
func (r *runner) classify(u usedEntry) (string, *endpoint) {
	r.mu.Lock()
	e := r.byMAC[u.MAC]
	r.mu.Unlock()
	if e == nil {
		return "a MAC the harness never sent", nil
	}
	killed, after := r.killedAfterRelease(e) // takes e.mu and r.mu: not under e.mu
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.p.name != u.Host:
		return fmt.Sprintf("the MAC of an endpoint of %s, recorded for host %s", e.p.name, u.Host), e
	case e.state == "release-failed":
		return "a leaked release (ReleaseAddress given up)", e
	case e.state == "gave-up":
		return "an allocation given up after errors: an attempt committed without an answer", e
	case e.state == "failed":
		return "an allocation answered with an error: it committed, and the plugin did not undo it", e
	case e.uncertain && e.addr.IsValid():
		return fmt.Sprintf("an unknown-outcome commit: an attempt failed without a clear answer, a retry with the same MAC got %s", e.addr), e
	case e.state == "released":
		if killed {
			return fmt.Sprintf("%s, %s after the release was sent", releasedThenKilled, after.Round(time.Millisecond)), e
		}
		return "released with success, yet still recorded", e
	default:
		return "unexplained (state " + e.state + ")", e
	}
}

// settled reads the pool until the used entries no endpoint holds stop changing: a plugin
// releases a claim that failed with an error in the background (for up to 30s), so an entry
// seen right after the load may be on its way out.
func (r *runner) settled(ctx context.Context) (*snapshot, error) {
	deadline := time.Now().Add(35 * time.Second)
	var last string
	stable := 0
	for {
		snap, err := r.snapshot(ctx)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		var extra []string
		for _, a := range sortedKeys(snap.used) {
			if len(r.held[a]) == 0 {
				extra = append(extra, a.String()+" "+snap.used[a].MAC)
			}
		}
		r.mu.Unlock()
		cur := strings.Join(extra, ",")
		if len(extra) == 0 || time.Now().After(deadline) {
			return snap, nil
		}
		if cur == last {
			if stable++; stable >= 3 {
				return snap, nil
			}
		} else {
			stable = 0
			r.logf("verify: %d used entries no endpoint holds; waiting for them to settle (a plugin's background undo)", len(extra))
		}
		last = cur
		time.Sleep(time.Second)
	}
}

// verify stops nothing (the faults are over): it compares etcd with what the endpoints hold,
// runs ipamctl check, releases everything, and checks that the free set is the seeded set.
func (r *runner) verify(ctx context.Context) error {
	snap, err := r.settled(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	held := make(map[netip.Addr][]*endpoint, len(r.held))
	nheld := 0
	for a, es := range r.held {
		held[a] = slices.Clone(es)
		nheld += len(es)
	}
	r.mu.Unlock()
	r.logf("verify: revision %d: %d free, %d used; the endpoints hold %d", snap.rev, len(snap.free), len(snap.used), nheld)

	r.violations(r.invariants(snap, "after the load"))

	// Every address an endpoint holds is in used/ with its host and MAC.
	for _, a := range sortedKeys(held) {
		for _, e := range held[a] {
			u, ok := snap.used[a]
			switch {
			case !ok:
				r.res.Lost++
				r.anomaly("LOST %s: held by %s mac %s, but used/%s is absent (free: %v)\n    %s", a, e.p.name, e.mac, addrKey(a), snap.free[a], e.describe())
			case u.Kind != "container" || u.Host != e.p.name || !strings.EqualFold(u.MAC, e.mac):
				r.res.Lost++
				r.anomaly("LOST %s: held by %s mac %s, but etcd records %s\n    %s", a, e.p.name, e.mac, u, e.describe())
			}
		}
	}
	if r.res.Lost > 0 {
		r.fail("%d held addresses not recorded in used/ for their holder", r.res.Lost)
	}

	// Everything else in used/ is leaked, or lost with a killed plugin.
	var leaked, unheld, lostWithPlugin []netip.Addr
	for _, a := range sortedKeys(snap.used) {
		if held[a] != nil {
			continue
		}
		unheld = append(unheld, a)
		u := snap.used[a]
		why, e := r.classify(u)
		if strings.HasPrefix(why, releasedThenKilled) {
			r.res.LostWithPlugin++
			lostWithPlugin = append(lostWithPlugin, a)
			r.logf("verify: %s: %s", a, why)
			continue
		}
		leaked = append(leaked, a)
		ev := fmt.Sprintf("LEAKED %s: %s\n    from %s", a, u, why)
		if e != nil {
			ev += "\n    " + e.describe()
		}
		r.anomaly("%s", ev)
	}
	r.res.Leaked = len(leaked)
	if len(leaked) > 0 {
		r.fail("%d leaked addresses in used/ that no endpoint holds", len(leaked))
	}

	r.runCheck(ctx, "after the load")

	// Release everything the endpoints hold, then the free set must be the seeded set.
	r.logf("verify: releasing the %d held addresses", nheld)
	for _, a := range sortedKeys(held) {
		for _, e := range held[a] {
			r.unhold(a, e)
			if !r.release(ctx, e, a) {
				r.fail("releasing %s (mac %s) on %s after the faults failed", a, e.mac, e.p.name)
				continue
			}
			r.checkReleased(ctx, a, e)
		}
	}
	r.releaseChecks.Wait()
	snap, err = r.snapshot(ctx)
	if err != nil {
		return err
	}
	r.violations(r.invariants(snap, "after releasing everything"))
	var missing []string
	for _, a := range sortedAddrs(r.seeded) {
		if !snap.free[a] && !slices.Contains(lostWithPlugin, a) { // those are reclaimed below, as gc would
			missing = append(missing, a.String())
		}
	}
	r.res.FreeMismatch = len(missing)
	for a := range snap.free {
		if !r.seeded[a] {
			r.res.FreeMismatch++
		}
	}
	r.logf("verify: after releasing everything: %d free of %d seeded, %d used", len(snap.free), len(r.seeded), len(snap.used))
	if r.res.FreeMismatch > 0 {
		r.fail("free set != seeded set after releasing everything: %d seeded addresses not free (%s), %d free addresses in all (seeded %d)",
			len(missing), abbreviate(missing, 20), len(snap.free), len(r.seeded))
	}
	for _, a := range sortedKeys(snap.used) {
		if !slices.Contains(unheld, a) {
			r.anomaly("after releasing everything %s is still used, and was not among the leaked: %s", a, snap.used[a])
			r.fail("%s still used after its release", a)
		}
	}

	// Reclaim the leaks through their hosts' plugins, as a gc would, to see that the free set
	// is whole again, and detach the pool on every host.
	if len(snap.used) > 0 {
		r.logf("verify: releasing the %d leaked addresses through their hosts", len(snap.used))
		for _, a := range sortedKeys(snap.used) {
			u := snap.used[a]
			var p *plugin
			for _, q := range r.plugins {
				if q.name == u.Host {
					p = q
				}
			}
			if p == nil {
				r.fail("leaked %s belongs to unknown host %q", a, u.Host)
				continue
			}
			e := &endpoint{mac: u.MAC, p: p, worker: -2, state: "reclaiming"}
			if !r.release(ctx, e, a) {
				r.fail("reclaiming leaked %s on %s failed: %s", a, p.name, e.describe())
			}
		}
		snap, err = r.snapshot(ctx)
		if err != nil {
			return err
		}
		r.violations(r.invariants(snap, "after reclaiming the leaks"))
		if !sameSet(snap.free, r.seeded) || len(snap.used) > 0 {
			r.fail("after reclaiming the leaks: %d free (seeded %d), %d used", len(snap.free), len(r.seeded), len(snap.used))
		} else {
			r.logf("verify: after reclaiming the leaks the free set is the seeded set")
		}
	}
	for _, p := range r.plugins {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		if err := p.ReleasePool(cctx, r.poolID); err != nil {
			r.fail("ReleasePool on %s: %v", p.name, err)
		}
		cancel()
	}
	r.runCheck(ctx, "at the end")
	if r.res.InvariantViolations > 0 {
		r.fail("%d invariant violations (free/used/seeded, ipamctl check)", r.res.InvariantViolations)
	}
	return nil
}

func (r *runner) violations(v []string) {
	r.res.InvariantViolations += len(v)
	for _, x := range v {
		r.anomaly("invariant: %s", x)
	}
}

func abbreviate(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, " ")
	}
	return strings.Join(s[:n], " ") + fmt.Sprintf(" … and %d more", len(s)-n)
}

// runCheck runs `ipamctl check SUBNET` on h1 when this ipamctl has it: its exit status is
// non-zero when it finds anomalies.
func (r *runner) runCheck(ctx context.Context, when string) {
	help, err := r.lab.Try(1, "ipamctl", "--help")
	if err != nil {
		r.fail("ipamctl --help: %v", err)
		return
	}
	has := false
	for _, line := range strings.Split(help, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.TrimSuffix(f[0], ",") == "check" {
			has = true
		}
	}
	if !has {
		r.res.Check = "not available in this ipamctl; the harness's own invariant checks ran instead"
		return
	}
	r.res.CheckRan = true
	out, err := r.lab.Try(1, "ipamctl", "check", "--json", r.cfg.Subnet)
	// The JSON is a list of pools, each with its anomalies; the exit status is non-zero when
	// there is any. Either one counts.
	var pools []struct {
		Subnet    string            `json:"subnet"`
		Anomalies []json.RawMessage `json:"anomalies"`
	}
	found := 0
	if jerr := json.Unmarshal([]byte(out), &pools); jerr == nil {
		for _, p := range pools {
			found += len(p.Anomalies)
		}
	} else if err == nil {
		r.anomaly("ipamctl check %s: unreadable JSON (%v):\n%s", when, jerr, out)
		found = 1
	}
	if err != nil && found == 0 {
		found = 1 // failed without listing anything: count the failure itself
	}
	if found > 0 {
		r.res.InvariantViolations += found
		r.anomaly("ipamctl check %s reports %d anomalies (%v):\n%s", when, found, err, out)
		r.res.Check += fmt.Sprintf("%s: %d anomalies; ", when, found)
		return
	}
	r.res.Check += fmt.Sprintf("%s: clean (%d pools, no anomalies); ", when, len(pools))
	r.logf("verify: ipamctl check %s: clean", when)
}
