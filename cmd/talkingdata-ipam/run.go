package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/cmd/internal/etcdflags"
	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/releasequeue"
)

// defaultRequestTimeout leaves room for a first RequestPool to seed a /16
// while staying far below anything an operator would call a hang.
const defaultRequestTimeout = 10 * time.Second

func run(c *cli.Context) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log) // etcdstore's background watchers log through it
	if c.Duration("request-timeout") <= 0 {
		return fmt.Errorf("invalid --request-timeout %s: must be positive", c.Duration("request-timeout"))
	}
	ctx := c.Context // ends with SIGINT or SIGTERM (main)

	cfg := etcdflags.Config(c)
	if len(cfg.Endpoints) == 0 && !c.Bool("embedded-etcd") {
		return errors.New("no etcd endpoints and the embedded etcd is off (--embedded-etcd=false): set --etcd-endpoints or IPAM_ETCD_ENDPOINTS, " +
			"for the managed plugin with `docker plugin disable talkingdata/ipam:latest; docker plugin set talkingdata/ipam:latest IPAM_ETCD_ENDPOINTS=http://ETCD:2379`")
	}
	if len(cfg.Endpoints) == 0 {
		e, err := startEmbedded(c.String("data-dir"), log)
		if err != nil {
			return err
		}
		defer e.Close()
		cfg.Endpoints = []string{embeddedClientURL}
	}
	var m *metrics
	if c.String("metrics-addr") != "" {
		m = newMetrics()
		cfg.Observe = m.observeEtcd
	}
	etcd, err := etcdstore.Dial(cfg)
	if err != nil {
		return err
	}
	defer etcd.Close()

	host := c.String("host-id")
	store := etcdstore.New(etcd, c.String("etcd-prefix"))
	driver := &ipam.Driver{
		Pools:         pool.New(store, pool.Config{Host: host, RequireInit: c.Bool("require-init"), ReuseDelay: c.Duration("reuse-delay")}),
		Timeout:       c.Duration("request-timeout"),
		NoEndpointMAC: !c.Bool("endpoint-mac"),
		LocalAddrs:    localAddrs,
		StoreName:     "etcd " + strings.Join(cfg.Endpoints, ","),
		Log:           log,
	}
	// Before anything touches etcd or the socket exists: a second machine
	// with this host id is refused here.
	live, err := startLiveness(ctx, store, host, driver.NamelessSticky, log)
	if err != nil {
		return err
	}
	defer live.stop() // after the calls in flight have drained
	pending, err := releasequeue.Open(c.String("data-dir"), driver.Pools, driver.Timeout, log)
	if err != nil {
		return err
	}
	driver.Pending = pending
	go pending.Run(ctx)
	go loadHostPools(ctx, store, host, log)
	if m != nil {
		stopMetrics, err := serveMetrics(c.String("metrics-addr"), m, store, driver.Pools, pending, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	// The socket comes last: once it exists, dockerd may take the daemon for started, so
	// errors from here on end the process (see holdUntilStopped).
	l, path, err := listen(c.String("socket"), c.String("socket-group"))
	if err != nil {
		return err
	}
	serving = true
	defer os.Remove(path)
	handler := ipam.Handler(driver, log)
	if m != nil {
		handler = m.instrument(handler)
	}
	srv := ipam.Server(handler, driver.Timeout)
	// Calls in flight finish before etcd is closed: a call cut off after
	// its transaction committed would be retried by dockerd and allocate
	// twice.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), driver.Timeout+time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			log.Warn("calls still running at shutdown were cut off", "err", err)
		}
	}()
	log.Info("serving", "socket", path, "host", host, "etcd", cfg.Endpoints, "prefix", c.String("etcd-prefix"))
	if err := srv.Serve(limitConns(l, maxConns)); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving %s: %w", path, err)
	}
	<-drained
	// Releases dockerd was answered for land before etcd is closed.
	wait, cancel := context.WithTimeout(context.Background(), driver.Timeout)
	defer cancel()
	if err := driver.Pools.WaitReleases(wait); err != nil {
		log.Warn("releases answered to dockerd were cut off at shutdown: their addresses stay used until `ipamctl gc` releases them", "err", err)
	}
	log.Info("stopped")
	return nil
}

// localAddrs lists this host's addresses, for default gateways.
func localAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsGlobalUnicast() {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// loadHostPoolsTimeout bounds loading the host's pools at start.
const loadHostPoolsTimeout = 30 * time.Second

// loadHostPools loads the free sets of the pools this host's networks use,
// as their first request would: the pool gauges exist from the start, not
// from dockerd's next call on each pool, and that call does not wait for
// the load. It runs beside serving, so a slow etcd does not delay the
// start, and a failure only leaves the loads to those calls.
func loadHostPools(ctx context.Context, store *etcdstore.Store, host string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, loadHostPoolsTimeout)
	defer cancel()
	subnets, err := store.HostPools(ctx, host)
	if err != nil {
		log.Warn("could not load this host's pools at start; each loads on its first call", "err", err)
		return
	}
	for _, subnet := range subnets {
		if _, err := store.FreeSet(ctx, subnet); err != nil {
			log.Warn("could not load a pool at start; it loads on its first call", "pool", subnet, "err", err)
		}
	}
}
