// Command talkingdata-ipam is the Docker IPAM plugin daemon.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/cmd/internal/etcdflags"
	"github.com/talkingdata/ipam/pool"
)

func main() {
	unsetEmpty("IPAM_")
	app := &cli.App{
		Name:  "talkingdata-ipam",
		Usage: "Docker IPAM plugin that allocates addresses from etcd",
		Flags: append(etcdflags.Flags(nil),
			&cli.StringFlag{Name: "socket", EnvVars: []string{"IPAM_SOCKET"}, Value: "talkingdata",
				Usage: "plugin socket: a path, or a bare name for " + pluginDir + "/NAME.sock"},
			&cli.StringFlag{Name: "socket-group", EnvVars: []string{"IPAM_SOCKET_GROUP"}, Value: "docker",
				Usage: "group given access to the socket, when it exists"},
			&cli.StringFlag{Name: "data-dir", EnvVars: []string{"IPAM_DATA_DIR"}, Value: "/var/lib/talkingdata-ipam",
				Usage: "embedded etcd's data, used when no --etcd-endpoints are given"},
			&cli.BoolFlag{Name: "embedded-etcd", EnvVars: []string{"IPAM_EMBEDDED_ETCD"}, Value: true,
				Usage: "run an embedded etcd when no --etcd-endpoints are given; false makes missing endpoints an error (the managed plugin sets false)"},
			&cli.DurationFlag{Name: "request-timeout", EnvVars: []string{"IPAM_REQUEST_TIMEOUT"}, Value: defaultRequestTimeout,
				Usage: "bound on every plugin call, etcd round trips included"},
			&cli.DurationFlag{Name: "reuse-delay", EnvVars: []string{"IPAM_REUSE_DELAY"}, Value: pool.DefaultReuseDelay,
				Usage: "keep a released container address from being handed out again for this long (0 disables)"},
			&cli.BoolFlag{Name: "require-init", EnvVars: []string{"IPAM_REQUIRE_INIT"},
				Usage: "refuse pools not seeded with `ipamctl init-range` instead of seeding them on first use"},
			&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{"IPAM_METRICS_ADDR"},
				Usage: "serve Prometheus /metrics and /healthz on this TCP address, e.g. 127.0.0.1:9522 (default: off)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"IPAM_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
		),
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "talkingdata-ipam:", err)
		os.Exit(1)
	}
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
