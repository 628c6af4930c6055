package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdproc"
	"github.com/talkingdata/ipam/internal/latency"
)

const (
	callTimeout = 10 * time.Second // one plugin call: the daemon's own --request-timeout
	etcdTimeout = 30 * time.Second // one etcd call of ours: a 128-op transaction on a busy disk
)

type runner struct {
	cfg      config
	out, log io.Writer
	dir      string // temp: etcd data, sockets, logs

	// Every key of the run is under runPrefix: ours under prefix, the baseline under
	// basePrefix, so a run against an existing etcd touches nothing else and can delete it all.
	runPrefix, prefix, basePrefix string

	etcd      *etcdproc.Cluster // nil: an etcd given by endpoints
	endpoints []string
	cli       *clientv3.Client
	store     *etcdstore.Store
	daemons   []*daemon
	// The fifty phase's latency links in front of the etcd members: the daemons', and the
	// baseline's with its client.
	links, baseLinks []*latency.Proxy
	baseCli          *clientv3.Client
	pools            map[string]*benchPool
	macs             atomic.Uint64
	res              *results
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (r *runner) debugf(format string, args ...any) {
	if r.cfg.Verbose {
		r.logf(format, args...)
	}
}

// run does the whole benchmark: start, measure, write the files, print the table, clean up.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) (*results, error) {
	for _, bin := range []string{cfg.PluginBin, cfg.IpamctlBin} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%w (run `make build`, or give -plugin and -ipamctl)", err)
		}
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	dir, err := os.MkdirTemp("", "ipambench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	// What an earlier run left to write back (the etcd data of a 1M pool) must not land in this
	// run's measurements: in make bench, the run after the 3-member sweep saw its first loads
	// take twice as long.
	syscall.Sync()
	id := fmt.Sprintf("%x", time.Now().UnixNano())
	r := &runner{cfg: cfg, out: stdout, log: stderr, dir: dir, pools: map[string]*benchPool{},
		runPrefix: "/ipambench/" + id + "/", res: &results{Name: cfg.Name, Start: time.Now()}}
	r.prefix, r.basePrefix = r.runPrefix+"ipam", r.runPrefix+"baseline/"
	defer r.cleanup()

	if err := r.start(ctx); err != nil {
		return nil, err
	}
	if err := r.phases(ctx); err != nil {
		return r.res, err
	}
	r.res.Duration = time.Since(r.res.Start)
	return r.res, r.report()
}

// start brings up etcd (unless given) and the daemons, and notes what runs.
func (r *runner) start(ctx context.Context) error {
	if len(r.cfg.EtcdEndpoints) > 0 {
		r.endpoints = r.cfg.EtcdEndpoints
	} else {
		bin, err := exec.LookPath(r.cfg.EtcdBin)
		if err != nil {
			return fmt.Errorf("etcd: %w (scripts/install-test-deps.sh installs it)", err)
		}
		r.logf("starting a %d-member etcd on loopback (data in %s)", r.cfg.EtcdCluster, r.dir)
		if r.etcd, err = startEtcd(ctx, bin, r.dir, r.cfg.EtcdCluster); err != nil {
			return err
		}
		r.endpoints = r.etcd.Endpoints()
	}
	cli, err := etcdstore.Dial(etcdstore.Config{Endpoints: r.endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("connecting to etcd %s: %w", r.endpoints, err)
	}
	r.cli, r.store = cli, etcdstore.New(cli, r.prefix)
	daemonEndpoints := r.endpoints
	if r.cfg.Phases["fifty"] {
		if daemonEndpoints, err = r.startLinks(); err != nil {
			return err
		}
	}
	r.logf("starting %d plugin daemon(s) (%s)", r.cfg.Instances, r.cfg.PluginBin)
	if err := r.startDaemons(ctx, daemonEndpoints); err != nil {
		return err
	}
	r.res.Setup = r.setup(ctx)
	r.logf("%s", r.res.Setup)
	return r.memCheckpoint("started")
}

// daemonStarts is how many daemons start at once: fifty one by one would take a while, all at
// once would put fifty first elections of the etcd client on two cores.
const daemonStarts = 8

// startDaemons starts cfg.Instances daemons talking to etcd at endpoints, r.daemons in order.
func (r *runner) startDaemons(ctx context.Context, endpoints []string) error {
	ds := make([]*daemon, r.cfg.Instances)
	err := r.fillers(ctx, len(ds), daemonStarts, func(ctx context.Context, i int) error {
		d, err := startDaemon(ctx, r.cfg.PluginBin, r.dir, i+1, endpoints, r.prefix)
		ds[i] = d
		return err
	})
	for _, d := range ds {
		if d != nil {
			r.daemons = append(r.daemons, d) // also on failure: cleanup stops them
		}
	}
	return err
}

// setup describes the machine, etcd and the plugin binary for the summary.
func (r *runner) setup(ctx context.Context) string {
	etcdVersion := "?"
	cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	if st, err := r.cli.Status(cctx, r.endpoints[0]); err == nil {
		etcdVersion = st.Version
	}
	kind := fmt.Sprintf("%d-member etcd %s on loopback, started by ipambench", r.cfg.EtcdCluster, etcdVersion)
	if r.cfg.EtcdCluster == 0 {
		kind = fmt.Sprintf("existing etcd %s at %s", etcdVersion, strings.Join(r.endpoints, ","))
	}
	rev := treeRevision()
	if bi, err := buildinfo.ReadFile(r.cfg.PluginBin); err == nil {
		var vcs, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				vcs = s.Value
			case "vcs.modified":
				modified = map[string]string{"true": " (modified)", "false": ""}[s.Value]
			}
		}
		if vcs != "" {
			rev = vcs[:min(12, len(vcs))] + modified
		}
	}
	return fmt.Sprintf("%s; %d plugin daemon(s), %s at %s; %d CPUs (%s), %s/%s; %s",
		kind, r.cfg.Instances, r.cfg.PluginBin, rev, runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, r.res.Start.Format(time.RFC3339))
}

// cpuModel names the processor: absolute figures depend on it (and on the host's load), so a
// comparison of runs must know it.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "model unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "model unknown"
}

// treeRevision names the working tree the run started in, for binaries built without VCS
// stamps (GOFLAGS=-buildvcs=false): `make bench` builds them from it just before. What the
// runs themselves write (docs/perf) does not make it dirty.
func treeRevision() string {
	head, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown revision"
	}
	rev := strings.TrimSpace(string(head))
	if changed, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/perf").Output(); err != nil || len(changed) > 0 {
		rev += "-dirty"
	}
	return "built from tree " + rev
}

func (r *runner) cleanup() {
	for _, d := range r.daemons {
		d.stop()
	}
	if r.baseCli != nil {
		r.baseCli.Close()
	}
	for _, l := range append(r.links, r.baseLinks...) {
		l.Close()
	}
	if r.cli != nil {
		if r.cfg.EtcdCluster == 0 {
			// Someone else's etcd: take our keys away again.
			ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
			if _, err := r.cli.Delete(ctx, r.runPrefix, clientv3.WithPrefix()); err != nil {
				r.logf("deleting %s from etcd: %v", r.runPrefix, err)
			}
			cancel()
		}
		r.cli.Close()
	}
	if r.etcd != nil {
		r.etcd.Stop()
	}
	if r.cfg.Keep {
		r.logf("kept %s", r.dir)
		return
	}
	if err := os.RemoveAll(r.dir); err != nil {
		r.logf("removing %s: %v", r.dir, err)
	}
}

// compact drops history so that etcd's memory and the run's later points do not pay for the
// earlier ones; it waits until the compaction is done, so no measurement shares the disk with
// it. An etcd we did not start is left alone: its owner's watchers may need that history.
func (r *runner) compact(ctx context.Context) error {
	if r.cfg.EtcdCluster == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	g, err := r.cli.Get(cctx, r.runPrefix, clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("compacting etcd: %w", err)
	}
	start := time.Now()
	if _, err := r.cli.Compact(cctx, g.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("compacting etcd at revision %d: %w", g.Header.Revision, err)
	}
	r.debugf("  compacted etcd at revision %d in %s", g.Header.Revision, time.Since(start).Round(time.Millisecond))
	return nil
}

func (r *runner) deletePrefix(ctx context.Context, prefix string) error {
	cctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	if _, err := r.cli.Delete(cctx, prefix, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("deleting %s: %w", prefix, err)
	}
	return nil
}

// alive fails the run as soon as a daemon died: every later figure would be an error.
func (r *runner) alive() error {
	for _, d := range r.daemons {
		if d.proc.Exited() {
			return fmt.Errorf("%s exited\n%s", d.id, d.proc.Tail(logTail))
		}
	}
	return nil
}

// memCheckpoint records every daemon's resident memory now.
func (r *runner) memCheckpoint(when string) error {
	for _, d := range r.daemons {
		m, err := d.mem()
		if err != nil {
			return err
		}
		r.res.Mem = append(r.res.Mem, memRow{When: when, Daemon: d.id, Mem: m})
	}
	m := r.res.Mem[len(r.res.Mem)-len(r.daemons)].Mem
	r.logf("daemon memory %s: %s VmRSS %.1f MiB, VmHWM %.1f MiB", when, r.daemons[0].id, float64(m.RSS)/1024, float64(m.HWM)/1024)
	return nil
}
