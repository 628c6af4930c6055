// Command talkingdata-ipam is the Docker IPAM plugin daemon.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/cmd/internal/etcdflags"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/releasequeue"
)

func main() {
	unsetEmpty("IPAM_")
	var hold bool
	app := &cli.App{
		Name:  "talkingdata-ipam",
		Usage: "Docker IPAM plugin that allocates addresses from etcd",
		// hold-on-error comes first: flags are read in order, and a bad value in a later one
		// must not keep it unset.
		Flags: append(append([]cli.Flag{
			&cli.BoolFlag{Name: "hold-on-error", EnvVars: []string{"IPAM_HOLD_ON_ERROR"}, Destination: &hold,
				Usage: "when the daemon cannot start, log why and wait for SIGTERM instead of exiting: dockerd restarts a managed plugin that exits, which races with the next `docker plugin enable` (the managed plugin sets true)"},
		}, etcdflags.Flags(nil)...),
			&cli.StringFlag{Name: "socket", EnvVars: []string{"IPAM_SOCKET"}, Value: "talkingdata",
				Usage: "plugin socket: a path, or a bare name for " + pluginDir + "/NAME.sock"},
			&cli.StringFlag{Name: "socket-group", EnvVars: []string{"IPAM_SOCKET_GROUP"}, Value: "docker",
				Usage: "group given access to the socket, when it exists"},
			&cli.StringFlag{Name: "data-dir", EnvVars: []string{"IPAM_DATA_DIR"}, Value: "/var/lib/talkingdata-ipam",
				Usage: "the daemon's state: releases etcd refused for want of space, kept until it has room (" + releasequeue.FileName + "), and the embedded etcd's data, used when no --etcd-endpoints are given"},
			&cli.BoolFlag{Name: "embedded-etcd", EnvVars: []string{"IPAM_EMBEDDED_ETCD"}, Value: true,
				Usage: "run an embedded etcd when no --etcd-endpoints are given; false makes missing endpoints an error (the managed plugin sets false)"},
			&cli.DurationFlag{Name: "request-timeout", EnvVars: []string{"IPAM_REQUEST_TIMEOUT"}, Value: defaultRequestTimeout,
				Usage: "bound on every plugin call, etcd round trips included"},
			&cli.DurationFlag{Name: "reuse-delay", EnvVars: []string{"IPAM_REUSE_DELAY"}, Value: pool.DefaultReuseDelay,
				Usage: "the reuse delay recorded in a pool this daemon creates on first use (a network on a pool ipamctl init-range did not seed): automatic allocation does not hand a released container address out again for this long; each pool's own delay applies (ipamctl pool show, pool set)"},
			&cli.BoolFlag{Name: "endpoint-mac", EnvVars: []string{"IPAM_ENDPOINT_MAC"}, Value: true,
				Usage: "ask dockerd for each endpoint's MAC, which tells a retried request from a new endpoint; false on hosts with ipvlan networks, as dockerd refuses ipvlan endpoints that have a MAC: endpoints are then told apart by name, which Docker 29 and later send (docs/OPERATIONS.md, macvlan and ipvlan)"},
			&cli.BoolFlag{Name: "require-init", EnvVars: []string{"IPAM_REQUIRE_INIT"},
				Usage: "refuse pools not seeded with `ipamctl init-range` instead of seeding them on first use"},
			&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{"IPAM_METRICS_ADDR"},
				Usage: "serve Prometheus /metrics and /healthz on this TCP address, e.g. 127.0.0.1:9522 (default: off)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"IPAM_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
		),
		Action: run,
	}
	// One signal context for the daemon and for holding, so that a SIGTERM that came during
	// start-up is not waited for again.
	stopped, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(stopped, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "talkingdata-ipam:", err)
		if hold && !serving {
			holdUntilStopped(stopped)
		}
		stop()
		os.Exit(1)
	}
}

// serving is set once the daemon has created its socket: an error after that still ends the
// process, so that dockerd restarts the plugin.
var serving bool

// holdUntilStopped waits for SIGTERM or SIGINT (stopped). The managed plugin does this instead of
// exiting when it cannot start. dockerd restarts a managed plugin whose process exits, also
// during `docker plugin enable`, and handles the restarted process's exit after that enable
// has already failed: the late handler deletes /run/docker/plugins/<id>/ (socket directory and
// stdio FIFOs) and may start the plugin again, under the next `docker plugin enable`, which then
// fails ("error mounting /run/docker/plugins/<id>", "opening file …-stdout", or on 20.10 "id
// already in use"). A plugin that waits lets enable fail cleanly instead: dockerd finds no
// socket after about 10 s, turns the restart off, stops the plugin with SIGTERM, and handles
// its exit before enable returns.
func holdUntilStopped(stopped context.Context) {
	fmt.Fprintln(os.Stderr, "talkingdata-ipam: not serving; waiting to be stopped (--hold-on-error)")
	<-stopped.Done()
}

// unsetEmpty drops the empty variables whose names start with prefix, so that
// IPAM_X= means "default", as with no IPAM_X at all: the managed plugin
// declares every setting with an empty value, and dockerd passes those on.
func unsetEmpty(prefix string) {
	for _, kv := range os.Environ() {
		if name, ok := strings.CutSuffix(kv, "="); ok && strings.HasPrefix(name, prefix) && !strings.Contains(name, "=") {
			os.Unsetenv(name)
		}
	}
}
