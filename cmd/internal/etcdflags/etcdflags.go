// Package etcdflags holds the etcd connection flags that the daemon and
// ipamctl share, so both read the same IPAM_* environment.
package etcdflags

import (
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/etcdstore"
)

// Flags returns the etcd flags; defaultEndpoints is what applies when none
// are given (the daemon leaves it empty to mean "embedded etcd").
func Flags(defaultEndpoints []string) []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "etcd-endpoints", EnvVars: []string{"IPAM_ETCD_ENDPOINTS"}, Value: cli.NewStringSlice(defaultEndpoints...),
			Usage: "etcd client URLs, comma-separated"},
		&cli.StringFlag{Name: "etcd-prefix", EnvVars: []string{"IPAM_ETCD_PREFIX"}, Value: etcdstore.DefaultPrefix, Usage: "key prefix of all pools"},
		&cli.StringFlag{Name: "etcd-cacert", EnvVars: []string{"IPAM_ETCD_CACERT"}, Usage: "CA bundle to verify etcd's certificate"},
		&cli.StringFlag{Name: "etcd-cert", EnvVars: []string{"IPAM_ETCD_CERT"}, Usage: "client certificate for etcd"},
		&cli.StringFlag{Name: "etcd-key", EnvVars: []string{"IPAM_ETCD_KEY"}, Usage: "client key for etcd"},
		&cli.StringFlag{Name: "etcd-username", EnvVars: []string{"IPAM_ETCD_USERNAME"}, Usage: "etcd user"},
		&cli.StringFlag{Name: "etcd-password", EnvVars: []string{"IPAM_ETCD_PASSWORD"}, Usage: "etcd password (prefer the environment variable)"},
		&cli.StringFlag{Name: "host-id", EnvVars: []string{"IPAM_HOST_ID"}, Value: hostname(), Usage: "this host's id, the owner of what it allocates"},
	}
}

// Config reads the flags.
func Config(c *cli.Context) etcdstore.Config {
	return etcdstore.Config{
		Endpoints:   c.StringSlice("etcd-endpoints"),
		CACert:      c.String("etcd-cacert"),
		Cert:        c.String("etcd-cert"),
		Key:         c.String("etcd-key"),
		Username:    c.String("etcd-username"),
		Password:    c.String("etcd-password"),
		DialTimeout: 5 * time.Second,
	}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}
